// safetensors: valid files load; every kind of broken file is a clear error, never a crash.
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "io/temp_dir.h"
#include "util/error.h"

namespace fh1::test {
namespace {

// Expects fn() to throw fh1::Error whose message contains every fragment.
template <typename F>
void expect_error(F fn, std::initializer_list<const char*> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const char* f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ValidFileLoadsWithViews) {
  TempDir dir;
  std::string data(4 * 6 + 2 * 3, '\0');
  const float one = 1.0f;
  memcpy(data.data(), &one, 4);
  const auto p = dir.write("model.safetensors",
                           safetensors_bytes(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                                             R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]}})",
                                             data));
  const SafetensorsFile f(p);
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorView* a = f.find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::F32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  float v;
  memcpy(&v, a->data, 4);
  EXPECT_EQ(v, 1.0f);
  EXPECT_EQ(f.find("b")->nbytes, 6u);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(Safetensors, MissingFile) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(dir.path / "nope.safetensors"); }, {"nope.safetensors", "cannot open"});
}

TEST(Safetensors, TruncatedBeforeHeaderLength) {
  TempDir dir;
  const auto p = dir.write("t.safetensors", "abc");
  expect_error([&] { SafetensorsFile f(p); }, {"t.safetensors", "truncated"});
}

TEST(Safetensors, AbsurdHeaderSize) {
  TempDir dir;
  const uint64_t n = 1ull << 60;
  const auto p = dir.write("t.safetensors", std::string(reinterpret_cast<const char*>(&n), 8) + "{}");
  expect_error([&] { SafetensorsFile f(p); }, {"absurd"});
}

TEST(Safetensors, HeaderRunsPastEnd) {
  TempDir dir;
  const uint64_t n = 1000;
  const auto p = dir.write("t.safetensors", std::string(reinterpret_cast<const char*>(&n), 8) + "{\"a\":1}");
  expect_error([&] { SafetensorsFile f(p); }, {"truncated", "1000"});
}

TEST(Safetensors, HeaderNotJson) {
  TempDir dir;
  const auto p = dir.write("t.safetensors", safetensors_bytes("{not json", ""));
  expect_error([&] { SafetensorsFile f(p); }, {"not valid JSON"});
}

TEST(Safetensors, DataRunsPastEnd) {
  TempDir dir;
  const auto p = dir.write("t.safetensors",
                           safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')));
  expect_error([&] { SafetensorsFile f(p); }, {"'w'", "past the end"});
}

TEST(Safetensors, OverlappingTensors) {
  TempDir dir;
  const auto p = dir.write("t.safetensors",
                           safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                             std::string(12, '\0')));
  expect_error([&] { SafetensorsFile f(p); }, {"'a'", "'b'", "overlap"});
}

TEST(Safetensors, ByteCountDisagreesWithShape) {
  TempDir dir;
  const auto p = dir.write("t.safetensors",
                           safetensors_bytes(R"({"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
  expect_error([&] { SafetensorsFile f(p); }, {"'a'", "expected 6 bytes"});
}

TEST(Safetensors, UnknownDtypeAndBadFields) {
  TempDir dir;
  auto p = dir.write("a.safetensors", safetensors_bytes(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", "x"));
  expect_error([&] { SafetensorsFile f(p); }, {"unknown dtype"});
  p = dir.write("b.safetensors", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx"));
  expect_error([&] { SafetensorsFile f(p); }, {"shape"});
  p = dir.write("c.safetensors", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", "xxxx"));
  expect_error([&] { SafetensorsFile f(p); }, {"data_offsets"});
  p = dir.write("d.safetensors", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "xxxx"));
  expect_error([&] { SafetensorsFile f(p); }, {"end before begin"});
  p = dir.write("e.safetensors", safetensors_bytes(R"([1,2])", ""));
  expect_error([&] { SafetensorsFile f(p); }, {"not a JSON object"});
}

TEST(TensorStore, ShardedIndexProblems) {
  TempDir dir;
  const std::string shard = safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "xxxx");
  dir.write("s1.safetensors", shard);
  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  expect_error([&] { TensorStore::open_dir(dir.path); }, {"s2.safetensors", "missing"});
  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})");
  expect_error([&] { TensorStore::open_dir(dir.path); }, {"'b'", "not in shard"});
  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":"../s1.safetensors"}})");
  expect_error([&] { TensorStore::open_dir(dir.path); }, {"plain file name"});
  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":""}})");
  expect_error([&] { TensorStore::open_dir(dir.path); }, {"shard name ''", "plain file name"});
  dir.write("model.safetensors.index.json", R"({"nothing":1})");
  expect_error([&] { TensorStore::open_dir(dir.path); }, {"weight_map"});
  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors"}})");
  const TensorStore store = TensorStore::open_dir(dir.path);
  EXPECT_NE(store.find("a"), nullptr);
  EXPECT_EQ(store.total_bytes(), 4u);
}

// Quantized matrices: U8 storage + a type in __metadata__ give a view of that type and logical
// shape; every inconsistency is a clear error.
TEST(Safetensors, QuantizedTensorsFromMetadata) {
  TempDir dir;
  const std::string data(2 * 68 + 4, '\0');
  const auto file = [&](const std::string& meta, const std::string& q_entry) {
    std::string header = R"({"__metadata__":{"format":"pt")";
    header += meta;
    header += R"(},"q":)";
    header += q_entry;
    header += R"(,"v":{"dtype":"F32","shape":[1],"data_offsets":[136,140]}})";
    return safetensors_bytes(header, data);
  };
  const std::string u8 = R"({"dtype":"U8","shape":[2,68],"data_offsets":[0,136]})";
  const SafetensorsFile f(dir.write("ok.safetensors", file(R"(,"falcon_h1.quant.q":"Q8_0")", u8)));
  EXPECT_EQ(f.find("q")->dtype, DType::Q8_0);
  EXPECT_EQ(f.find("q")->shape, (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(f.find("q")->nbytes, 136u);
  EXPECT_EQ(f.find("v")->dtype, DType::F32);
  const SafetensorsFile plain(dir.write("plain.safetensors", file("", u8)));  // no metadata: stays U8
  EXPECT_EQ(plain.find("q")->dtype, DType::U8);

  expect_error([&] { SafetensorsFile g(dir.write("a.safetensors", file(R"(,"falcon_h1.quant.q":"Q5_1")", u8))); },
               {"'q'", "Q8_0, Q4_0 or Q4_K", "Q5_1"});
  expect_error([&] { SafetensorsFile g(dir.write("b.safetensors", file(R"(,"falcon_h1.quant.zz":"Q8_0")", u8))); },
               {"'zz'", "not in the file"});
  expect_error([&] { SafetensorsFile g(dir.write("c.safetensors", file(R"(,"falcon_h1.quant.v":"Q8_0")", u8))); },
               {"'v'", "U8 [rows, row_bytes]"});
  expect_error([&] { SafetensorsFile g(dir.write("d.safetensors", file(R"(,"falcon_h1.quant.q":"Q4_K")", u8))); },
               {"'q'", "not whole Q4_K blocks"});
  expect_error([&] { SafetensorsFile g(dir.write("e.safetensors", file(R"(,"falcon_h1.quant.q":7)", u8))); },
               {"'q'", "a string"});
}

TEST(TensorStore, EmptyDirectory) {
  TempDir dir;
  expect_error([&] { TensorStore::open_dir(dir.path); }, {"no model.safetensors"});
}

}  // namespace
}  // namespace fh1::test
