// Placeholder until the reference lands.
#include "reference.h"
