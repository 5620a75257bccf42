// WindowMask's interval forms against its predicate: the fast paths mask whole rows by one interval
// compare (first_key / end_key per query row in the forwards, first_query / end_query per key row in
// the sm90 backward), so each interval must hold exactly the positions visible() accepts.
#include <gtest/gtest.h>

#include "core/mask.h"

namespace ioattn {
namespace {

TEST(WindowMask, IntervalsMatchPredicate) {
  const int kSq[] = {1, 5, 13}, kSk[] = {1, 7, 13};
  const int kBounds[] = {-1, 0, 1, 3, 20};
  int checked = 0;
  for (int sq : kSq)
    for (int sk : kSk)
      for (int left : kBounds)
        for (int right : kBounds) {
          const WindowMask m{left, right, sk - sq};
          for (int i = 0; i < sq; ++i) {  // query rows: keys [first_key, end_key)
            const int lo = m.first_key(i), hi = m.end_key(i, sk);
            for (int j = 0; j < sk; ++j) EXPECT_EQ(m.visible(i, j), j >= lo && j < hi) << i << " " << j;
          }
          for (int j = 0; j < sk; ++j) {  // key rows: queries [first_query, end_query)
            const int lo = m.first_query(j), hi = m.end_query(j);
            EXPECT_GE(lo, 0);
            for (int i = 0; i < sq; ++i) {
              EXPECT_EQ(m.visible(i, j), i >= lo && i < hi)
                  << "sq " << sq << " sk " << sk << " left " << left << " right " << right << " i " << i << " j " << j;
              ++checked;
            }
          }
        }
  EXPECT_GT(checked, 1000);
}

}  // namespace
}  // namespace ioattn
