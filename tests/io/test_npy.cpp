#include <gtest/gtest.h>

#include "io/npy.h"
#include "io/temp_dir.h"
#include "util/error.h"

namespace fh1::test {
namespace {

TEST(Npy, RoundTrip) {
  TempDir dir;
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  write_npy_f32(dir.path / "a.npy", {2, 3}, v.data());
  const NpyArray a = read_npy(dir.path / "a.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.data, v);
  write_npy_f32(dir.path / "b.npy", {6}, v.data());
  EXPECT_EQ(read_npy(dir.path / "b.npy").shape, (std::vector<int64_t>{6}));
}

TEST(Npy, BadFiles) {
  TempDir dir;
  EXPECT_THROW(read_npy(dir.write("x.npy", "hello")), Error);
  EXPECT_THROW(read_npy(dir.path / "missing.npy"), Error);
}

}  // namespace
}  // namespace fh1::test
