// libFuzzer target: arbitrary bytes as the data.pkl of a torch.save checkpoint. The restricted
// unpickler must return a state dict or a Status, never crash or run anything.
#include <cstdint>
#include <string>

#include "openmoe/io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string pickle(reinterpret_cast<const char*>(data), size);
  (void)openmoe::io::ParseStateDictPickle(pickle, "fuzz.bin");
  return 0;
}
