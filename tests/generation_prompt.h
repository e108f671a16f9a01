// File: tests/generation_prompt.h
// The fixtures' generation case (tests/data/openmoe/<case>/expected.safetensors): the left-padded
// prompt gen_prompt_ids / gen_prompt_mask [B, len] and the reference greedy continuation
// gen_greedy_ids [B, steps].
#ifndef TESTS_GENERATION_PROMPT_H_
#define TESTS_GENERATION_PROMPT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/io/safetensors.h"

namespace openmoe::testing {

struct Prompt {
  std::vector<int64_t> ids, mask, greedy;  // [batch, len], [batch, len], [batch, steps]
  int64_t batch = 0, len = 0, steps = 0;
};

inline Prompt LoadPrompt(const std::string& dir) {
  Prompt p;
  auto file = io::SafetensorsFile::Open(dir + "/expected.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return p;
  p.batch = file->Find("gen_prompt_ids")->shape[0], p.len = file->Find("gen_prompt_ids")->shape[1];
  p.steps = file->Find("gen_greedy_ids")->shape[1];
  p.ids.resize(p.batch * p.len), p.mask.resize(p.batch * p.len), p.greedy.resize(p.batch * p.steps);
  EXPECT_TRUE(file->ReadAsInt64("gen_prompt_ids", p.ids.data(), p.ids.size()).ok());
  EXPECT_TRUE(file->ReadAsInt64("gen_prompt_mask", p.mask.data(), p.mask.size()).ok());
  EXPECT_TRUE(file->ReadAsInt64("gen_greedy_ids", p.greedy.data(), p.greedy.size()).ok());
  return p;
}

}  // namespace openmoe::testing

#endif  // TESTS_GENERATION_PROMPT_H_
