// MessageBytes, FieldReader and MessageBuilder on hand-made inputs: slice boundaries everywhere,
// every wire type, and malformed bytes.

#include <gtest/gtest.h>

#include "flatten.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "flashkv/wire/field_reader.h"
#include "flashkv/wire/message_builder.h"
#include "flashkv/wire/message_bytes.h"

namespace flashkv::wire {
namespace {

// Splits `bytes` into slices at the given cut points (empty slices included on purpose).
MessageBytes Split(const std::string& bytes, std::vector<size_t> cuts) {
  std::vector<grpc::Slice> slices;
  size_t start = 0;
  cuts.push_back(bytes.size());
  for (size_t cut : cuts) {
    slices.emplace_back(bytes.data() + start, cut - start);
    if (cut == start) slices.emplace_back();  // an extra empty slice
    start = cut;
  }
  return MessageBytes::FromSlices(std::move(slices));
}

MessageBytes EveryByteASlice(const std::string& bytes) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < bytes.size(); ++i) cuts.push_back(i);
  return Split(bytes, cuts);
}


TEST(MessageBytesTest, LocatesCopiesAndVisitsAcrossSlices) {
  const std::string text = "0123456789abcdef";
  const MessageBytes bytes = Split(text, {3, 3, 10});
  EXPECT_EQ(bytes.size(), text.size());
  EXPECT_EQ(bytes.num_slices(), 3u);  // empty slices dropped
  const uint8_t* inside = bytes.Contiguous(Span{4, 5});
  ASSERT_NE(inside, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(inside), 5), "45678");
  EXPECT_EQ(bytes.Contiguous(Span{2, 5}), nullptr);   // crosses a boundary
  EXPECT_NE(bytes.Contiguous(Span{16, 0}), nullptr);  // empty ranges are always contiguous
  for (size_t offset = 0; offset <= text.size(); ++offset) {
    for (size_t size = 0; offset + size <= text.size(); ++size) {
      std::string copy(size, '?');
      bytes.CopyTo(Span{offset, size}, copy.data());
      ASSERT_EQ(copy, text.substr(offset, size)) << offset << "+" << size;
      std::string visited;
      bytes.ForEachFragment(Span{offset, size}, [&](const uint8_t* d, size_t n) {
        visited.append(reinterpret_cast<const char*>(d), n);
      });
      ASSERT_EQ(visited, copy);
    }
  }
}

TEST(FieldReaderTest, ReadsEveryWireTypeAcrossSliceBoundaries) {
  MessageBuilder b;
  b.VarintField(1, 300);
  b.VarintField(2, ~uint64_t{0});  // ten-byte varint
  b.Fixed32Field(3, 0xdeadbeef);
  b.Tag(4, WireType::kFixed64);
  for (int i = 0; i < 8; ++i) b.Copy("\x01\x02\x03\x04\x05\x06\x07\x08" + i, 1);
  b.LengthDelimitedHeader(536870911, 3);  // the largest field number
  b.Copy("xyz", 3);
  const std::string bytes = Flatten(b.Finish());
  for (const MessageBytes& message : {Split(bytes, {}), EveryByteASlice(bytes)}) {
    FieldReader reader(message, message.whole());
    Field f;
    ASSERT_TRUE(reader.Next(&f));
    EXPECT_EQ(f.number, 1u);
    EXPECT_EQ(f.value, 300u);
    ASSERT_TRUE(reader.Next(&f));
    EXPECT_EQ(f.value, ~uint64_t{0});
    ASSERT_TRUE(reader.Next(&f));
    EXPECT_EQ(f.type, WireType::kFixed32);
    EXPECT_EQ(f.value, 0xdeadbeefu);
    ASSERT_TRUE(reader.Next(&f));
    EXPECT_EQ(f.type, WireType::kFixed64);
    EXPECT_EQ(f.value, 0x0807060504030201u);
    ASSERT_TRUE(reader.Next(&f));
    EXPECT_EQ(f.number, 536870911u);
    EXPECT_EQ(ReadString(message, f), "xyz");
    EXPECT_FALSE(reader.Next(&f));
    EXPECT_TRUE(reader.status().ok());
  }
}

TEST(FieldReaderTest, RejectsMalformedInputNamingTheOffset) {
  const struct {
    std::string bytes;
    const char* error;
  } cases[] = {
      {std::string("\x08", 1), "truncated varint"},
      {std::string("\x08\x80\x80", 3), "truncated varint"},
      {std::string("\x08") + std::string(10, '\xff') + "\x01", "longer than 10 bytes"},
      {std::string("\x00\x01", 2), "invalid field number 0"},
      {std::string("\x0b", 1), "unsupported wire type 3"},
      {std::string("\x0e", 1), "unsupported wire type 6"},
      {std::string("\x12\x05"
                   "ab",
                   4),
       "runs past the end"},
      {std::string("\x0d\x01\x02", 3), "truncated fixed-width"},
  };
  for (const auto& c : cases) {
    for (const MessageBytes& message : {Split(c.bytes, {}), EveryByteASlice(c.bytes)}) {
      FieldReader reader(message, message.whole());
      Field f;
      while (reader.Next(&f)) {
      }
      EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(reader.status().message().find(c.error), std::string::npos)
          << reader.status() << " for case expecting " << c.error;
      EXPECT_NE(reader.status().message().find("at byte"), std::string::npos);
    }
  }
}

// Found by the wire_decode fuzz target: an over-long varint was reported at its first byte when
// it lay in one slice and at its eleventh when it crossed slices.
TEST(FieldReaderTest, ErrorsNameTheSameOffsetHoweverTheMessageIsSliced) {
  const struct {
    std::string bytes;
    size_t cut;  // a slice boundary inside the bad varint
    const char* error;
  } cases[] = {
      {std::string("\x08\x01\x08") + std::string(10, '\xff') + "\x01" + std::string(8, 'x'), 9,
       "varint longer than 10 bytes at byte 3"},
      {std::string("\x08\x01\x08\x80\x80", 5), 4, "truncated varint at byte 3"},
  };
  for (const auto& c : cases) {
    for (const MessageBytes& message :
         {Split(c.bytes, {}), EveryByteASlice(c.bytes), Split(c.bytes, {c.cut})}) {
      FieldReader reader(message, message.whole());
      Field f;
      while (reader.Next(&f)) {
      }
      EXPECT_EQ(reader.status(), absl::InvalidArgumentError(c.error));
    }
  }
}

TEST(FieldReaderTest, RepeatedVarintsPackedOrNot) {
  MessageBuilder b;
  b.VarintField(5, 7);  // unpacked
  b.LengthDelimitedHeader(5, 4);
  b.Varint(1);
  b.Varint(300);  // two bytes
  b.Varint(0);
  b.VarintField(5, static_cast<uint64_t>(int64_t{-2}));  // negative: ten bytes, sign-extended
  const std::string bytes = Flatten(b.Finish());
  const MessageBytes message = EveryByteASlice(bytes);
  FieldReader reader(message, message.whole());
  std::vector<int64_t> values;
  Field f;
  while (reader.Next(&f)) ASSERT_TRUE(AppendRepeatedVarint(message, f, &values).ok());
  EXPECT_EQ(values, (std::vector<int64_t>{7, 1, 300, 0, -2}));

  // A packed payload that ends inside a varint.
  const std::string bad = std::string("\x2a\x02\x01\x80", 4);
  const MessageBytes bad_message = Split(bad, {});
  FieldReader bad_reader(bad_message, bad_message.whole());
  ASSERT_TRUE(bad_reader.Next(&f));
  EXPECT_FALSE(AppendRepeatedVarint(bad_message, f, &values).ok());
  // A fixed32 is neither form.
  const std::string fixed = std::string("\x2d\x01\x00\x00\x00", 5);
  const MessageBytes fixed_message = Split(fixed, {});
  FieldReader fixed_reader(fixed_message, fixed_message.whole());
  ASSERT_TRUE(fixed_reader.Next(&f));
  EXPECT_FALSE(AppendRepeatedVarint(fixed_message, f, &values).ok());
}

TEST(MessageBuilderTest, AliasesLargePayloadsAndKeepsTheirOwnerAlive) {
  auto owner = std::make_shared<std::vector<uint8_t>>(MessageBuilder::kAliasThresholdBytes * 2, 7);
  std::weak_ptr<std::vector<uint8_t>> watch = owner;
  const std::vector<uint8_t> small(16, 3);
  grpc::ByteBuffer buffer;
  {
    MessageBuilder b;
    b.LengthDelimitedHeader(1, owner->size());
    b.Alias(owner->data(), owner->size(), owner);
    b.LengthDelimitedHeader(2, small.size());
    b.Alias(small.data(), small.size(), std::make_shared<int>(0));  // below threshold: copied
    EXPECT_EQ(b.size(), 3 + owner->size() + 2 + small.size());
    buffer = b.Finish();
  }
  owner.reset();
  EXPECT_FALSE(watch.expired()) << "the slice must hold the owner";
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(buffer.Dump(&slices).ok());
  EXPECT_EQ(slices.size(), 3u);  // header, aliased payload, header + copied payload
  EXPECT_EQ(slices[1].begin(), watch.lock()->data());
  const std::string flat = Flatten(buffer);
  EXPECT_EQ(flat.size(), 3 + MessageBuilder::kAliasThresholdBytes * 2 + 2 + 16);
  slices.clear();
  buffer.Clear();
  EXPECT_TRUE(watch.expired()) << "releasing the message must release the owner";
}

TEST(MessageBuilderTest, SizesMatchWhatIsWritten) {
  for (uint64_t v : {0ull, 1ull, 127ull, 128ull, 16383ull, 16384ull, ~0ull}) {
    MessageBuilder b;
    b.Varint(v);
    EXPECT_EQ(b.size(), VarintSize(v)) << v;
  }
  for (uint32_t field : {1u, 15u, 16u, 2047u, 2048u, 536870911u}) {
    MessageBuilder b;
    b.Tag(field, WireType::kVarint);
    EXPECT_EQ(b.size(), TagSize(field)) << field;
  }
}

}  // namespace
}  // namespace flashkv::wire
