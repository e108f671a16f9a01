// File: tests/fixtures.h
// Reading the shared fixtures (tests/data/openmoe/<case>, see its README): the training batch of
// expected.safetensors, the scalars of expected.json and the AdamW settings recorded there.
#ifndef TESTS_FIXTURES_H_
#define TESTS_FIXTURES_H_

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/adamw.h"
#include "nlohmann/json.hpp"
#include "openmoe/io/token_batch.h"

namespace openmoe::testing {

inline std::string FixtureDir(const std::string& name) { return "tests/data/openmoe/" + name; }

// input_ids / attention_mask [B, S] of the fixture's loss, gradient and AdamW cases.
inline absl::StatusOr<io::TokenBatch> FixtureBatch(const std::string& dir) {
  return io::ReadTokenBatch(dir + "/expected.safetensors", "fixture");
}

inline nlohmann::json FixtureJson(const std::string& dir) {
  std::ifstream in(dir + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

inline kernels::AdamWOptions FixtureAdamW(const nlohmann::json& expected) {
  const nlohmann::json& a = expected["adamw"];
  kernels::AdamWOptions options;
  options.lr = a["lr"], options.beta1 = a["betas"][0], options.beta2 = a["betas"][1];
  options.eps = a["eps"], options.weight_decay = a["weight_decay"];
  return options;
}

}  // namespace openmoe::testing

#endif  // TESTS_FIXTURES_H_
