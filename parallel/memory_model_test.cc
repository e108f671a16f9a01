// The memory model against arithmetic done by hand (in the comments) on a tiny config, never
// against its own output: V 10, H 4, I 6, 2 layers (layer 1 MoE), 2 heads of 2 (Wq = Wkv = 4),
// E 4, top-2, capacity factor 1.25, min capacity 4.
#include "parallel/memory_model.h"

#include "gtest/gtest.h"
#include "openmoe/config.h"

namespace openmoe::parallel {
namespace {

OpenMoeConfig Tiny() {
  OpenMoeConfig c;
  c.vocab_size = 10, c.hidden_size = 4, c.intermediate_size = 6, c.num_hidden_layers = 2;
  c.num_attention_heads = c.num_key_value_heads = 2, c.head_dim = 2;
  c.num_experts = 4, c.moe_layer_interval = 2;
  return c;
}

// bf16, batch 1 x 8 tokens: N = 8, T = 2 bytes.
ActivationShape Shape(bool recompute = false) { return ActivationShape{1, 8, 2, recompute}; }

TEST(MemoryModel, ParameterCountsByKind) {
  const ModelParameters p = CountModelParameters(Tiny());
  // embed 10 x 4 = 40; head: norm 4 + lm_head 40 = 44.
  EXPECT_EQ(p.embedding.dense, 40);
  EXPECT_EQ(p.head.dense, 44);
  ASSERT_EQ(p.layers.size(), 2u);
  // Layer 0 (dense): norms 2 x 4, q/k/v/o 4 x 16, gate 12 x 4 = 48, up 24, down 24: 168.
  EXPECT_EQ(p.layers[0].dense, 168);
  EXPECT_EQ(p.layers[0].expert, 0);
  EXPECT_EQ(p.layers[0].largest_dense, 48);
  // Layer 1 (MoE): norms 3 x 4, q/k/v/o 64, router 4 x 4, extra MLP 96 = 188 dense;
  // experts 4 x (4 x 12 + 4 x 6 + 6 x 4) = 384; the largest expert slice, one wi_gate, 4 x 12 = 48.
  EXPECT_EQ(p.layers[1].dense, 188);
  EXPECT_EQ(p.layers[1].expert, 384);
  EXPECT_EQ(p.layers[1].largest_expert, 48);
  EXPECT_EQ(p.Dense(), 440);
  EXPECT_EQ(p.Expert(), 384);
}

TEST(MemoryModel, Meshes) {
  const OpenMoeConfig c = Tiny();
  absl::StatusOr<Mesh> m = MakeMesh({Plugin::kEp, 4, 1}, c);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->ep, 4); EXPECT_EQ(m->expert_dp, 1);
  EXPECT_EQ(m->dense_dp, 4);
  m = MakeMesh({Plugin::kEpZero, 8, 1, /*extra_dp=*/4}, c);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->ep, 2); EXPECT_EQ(m->expert_dp, 4);
  EXPECT_EQ(m->dense_dp, 8);
  m = MakeMesh({Plugin::kHybrid, 8, 1, 1, /*pp=*/2, /*ep=*/2, /*dp=*/2}, c);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->pp, 2); EXPECT_EQ(m->ep, 2);
  EXPECT_EQ(m->expert_dp, 2); EXPECT_EQ(m->dense_dp, 4);
  EXPECT_FALSE(MakeMesh({Plugin::kEp, 8, 1}, c).ok());                       // 4 experts over 8 ranks
  EXPECT_FALSE(MakeMesh({Plugin::kEpZero, 6, 1, 4}, c).ok());                // k does not divide the world
  EXPECT_FALSE(MakeMesh({Plugin::kHybrid, 8, 1, 1, 2, 2, 1}, c).ok());       // 2 x 2 x 1 != 8
  EXPECT_FALSE(MakeMesh({Plugin::kHybrid, 4, 2, 1, 2, 2, 1}, c).ok());       // ZeRO-2 with a pipeline
  EXPECT_FALSE(MakeMesh({Plugin::kHybrid, 3, 1, 1, 3, 1, 1}, c).ok());       // 3 stages, 2 layers
}

TEST(MemoryModel, Capacity) {
  // floor(2 x 1.25 x 8 / 4) = 5, rounded up to even 6; 4 tokens: floor(2.5) = 2 -> min 4.
  EXPECT_EQ(TrainingCapacity(Tiny(), 8), 6);
  EXPECT_EQ(TrainingCapacity(Tiny(), 4), 4);
  // 8B at 2048 tokens: floor(2 x 1.25 x 2048 / 32) = 160.
  absl::StatusOr<OpenMoeConfig> b8 = PresetConfig("8b");
  ASSERT_TRUE(b8.ok());
  EXPECT_EQ(TrainingCapacity(*b8, 2048), 160);
}

TEST(MemoryModel, ActivationParts) {
  const OpenMoeConfig c = Tiny();
  // Dense layer: N (4H + 2Wq + 2Wkv + 4I) T = 8 x (16 + 8 + 8 + 24) x 2 = 896.
  EXPECT_EQ(KeptLayerBytes(c, 0, Shape()), 896);
  // MoE layer: 896 + h2, x3, router logits 8 x (8 + 4) x 2 = 192 + probs 8 x 4 x 4 = 128
  // + experts/rank 8 x 4 x 4 = 128 + expert rows R = 4 x 6 = 24: 24 x (8 + 24) x 2 = 1536 -> 2880.
  EXPECT_EQ(KeptLayerBytes(c, 1, Shape()), 2880);
  // Attention backward 8 x ((12 + 16) x 4 + 12 x 2 + 4 x 8) = 1344; MLP backward
  // 8 x (96 + 72 + 36 + 8 + 36) = 1984; experts 24 x (12 + 42) x 4 + 8 x 4 x 4 = 5312 (+ 24 x 4 x 2 = 192 with EP).
  EXPECT_EQ(LayerWorkspaceBytes(c, 0, Shape(), false), 1984);
  EXPECT_EQ(LayerWorkspaceBytes(c, 1, Shape(), false), 5312);
  EXPECT_EQ(LayerWorkspaceBytes(c, 1, Shape(), true), 5504);
  // LM head: 8 rows x 10 x (4 + 4) = 640 + dxf 8 x 4 x 2 = 64 + 2 x 8 x 4 x 4 = 256, + all 8 rows'
  // logit gradients 8 x 10 x 2 = 160 (one weight product) -> 1120.
  EXPECT_EQ(HeadWorkspaceBytes(c, Shape()), 1120);
  // Scratch: chunk = all 8 rows; 2 x 8 x 8 = 128 scores x (8 + 4) = 1536 + 8 x 4 x 4 = 128 -> 1664.
  EXPECT_EQ(AttentionScratchBytes(c, Shape()), 1664);
}

TEST(MemoryModel, SingleRankTotals) {
  // ep on 1 rank, ZeRO 0: 824 parameters x (2 + 4 + 4 + 8) bytes.
  absl::StatusOr<RankMemory> m = PeakRankMemory(Tiny(), {Plugin::kEp, 1, 0}, Shape());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights, 1648);
  EXPECT_EQ(m->master, 3296);
  EXPECT_EQ(m->grads, 3296);
  EXPECT_EQ(m->moments, 6592);
  // Kept 896 + 2880 + h 64 + ids/mask/labels 192 = 4032; + h_final, xf 128; + dh/dx/dnorm
  // 3 x 8 x 4 x 4 = 384; + workspace max(1984, 5312, 960) = 5312; + scratch 1664 -> 11520.
  EXPECT_EQ(m->activations, 11520);
  // Recomputation: 2 layer inputs 128 + 64 + 192 + 128 + the recomputed MoE layer 2880 + 384
  // + 5312 + 1664 = 10752.
  m = PeakRankMemory(Tiny(), {Plugin::kEp, 1, 0}, Shape(/*recompute=*/true));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->activations, 10752);
}

TEST(MemoryModel, EpZero1) {
  // ep on 2 ranks: 2 experts each (192 expert parameters, one replica); 440 dense over 2.
  absl::StatusOr<RankMemory> m = PeakRankMemory(Tiny(), {Plugin::kEp, 2, 1}, Shape());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights, 2 * (440 + 192));        // 1264
  EXPECT_EQ(m->master, 4 * 220 + 4 * 192);       // 1648: dense sharded, experts not (no replica)
  EXPECT_EQ(m->grads, 4 * 440 + 4 * 192);        // 2528: ZeRO-1 keeps whole gradients
  EXPECT_EQ(m->moments, 8 * 220 + 8 * 192);      // 3296
  EXPECT_EQ(m->activations, 11520 + 192);        // + the all-to-all buffer
}

TEST(MemoryModel, EpZeroWithZero2) {
  // ep_zero, 4 ranks, k = 2: EP 2 (192 expert parameters each) in 2 replicas; dense over 4.
  absl::StatusOr<RankMemory> m = PeakRankMemory(Tiny(), {Plugin::kEpZero, 4, 2, 2}, Shape());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights, 1264);
  EXPECT_EQ(m->master, 4 * 110 + 4 * 96);   // 824
  EXPECT_EQ(m->moments, 8 * 110 + 8 * 96);  // 1648
  // Shards 4 x 110 + 4 x 96, plus one whole tensor: max(gate_proj 48, one expert's wi_gate 48) x 4 = 192.
  EXPECT_EQ(m->grads, 1016);
}

TEST(MemoryModel, HybridStages) {
  // pp 2 x ep 2 x dp 1, ZeRO-1: two layers, so layer 0 + embedding on stage 0, layer 1 + head on
  // stage 1; dense DP over ep x dp = 2, experts (192 a rank) unreplicated.
  const OpenMoeConfig c = Tiny();
  const ParallelPlan plan{Plugin::kHybrid, 4, 1, 1, 2, 2, 1};
  absl::StatusOr<Mesh> mesh = MakeMesh(plan, c);
  ASSERT_TRUE(mesh.ok());
  const ModelParameters p = CountModelParameters(c);
  const RankMemory s0 = StageMemory(c, p, plan, *mesh, 0, 0, 1, Shape());
  const RankMemory s1 = StageMemory(c, p, plan, *mesh, 1, 1, 2, Shape());
  // Stage 0: 208 dense: weights 416, master 4 x 104 = 416, grads 832, moments 832.
  EXPECT_EQ(s0.weights, 416); EXPECT_EQ(s0.master, 416);
  EXPECT_EQ(s0.grads, 832); EXPECT_EQ(s0.moments, 832);
  // Two micro-batches in flight: 2 x (896 + 64 + 192) = 2304; + send/receive 128; + 384;
  // + MLP workspace 1984; + scratch 1664 -> 6464.
  EXPECT_EQ(s0.activations, 6464);
  // Stage 1: 232 dense + 192 expert: weights 848, master 4 x 116 + 4 x 192 = 1232, grads
  // 928 + 768 = 1696, moments 2464; activations 2880 + 64 + 192 + 128 (h_final, xf) + 128
  // + 384 + 5504 (experts, EP) + 1664 = 10944.
  EXPECT_EQ(s1.weights, 848); EXPECT_EQ(s1.master, 1232);
  EXPECT_EQ(s1.grads, 1696); EXPECT_EQ(s1.moments, 2464);
  EXPECT_EQ(s1.activations, 10944);
  absl::StatusOr<RankMemory> peak = PeakRankMemory(c, plan, Shape());
  ASSERT_TRUE(peak.ok()) << peak.status();
  EXPECT_EQ(peak->stage, 1);
  EXPECT_EQ(peak->total(), 848 + 1232 + 1696 + 2464 + 10944);
  EXPECT_EQ(peak->stage_layers, (std::vector<int64_t>{1, 1}));
}

TEST(MemoryModel, PresetTotalsMatchTheSpec) {
  // openmoe_spec.md 1.1: 8B 11,855,046,656 and 34B 46,270,737,408 parameters.
  for (const auto& [name, total] : {std::pair<const char*, int64_t>{"8b", 11855046656}, {"34b", 46270737408}}) {
    absl::StatusOr<OpenMoeConfig> c = PresetConfig(name);
    ASSERT_TRUE(c.ok());
    const ModelParameters p = CountModelParameters(*c);
    EXPECT_EQ(p.Dense() + p.Expert(), total) << name;
  }
  // 8B experts by hand: 4 MoE layers x 32 x 4 x 2048 x 8192 = 8,589,934,592.
  absl::StatusOr<OpenMoeConfig> b8 = PresetConfig("8b");
  EXPECT_EQ(CountModelParameters(*b8).Expert(), 8589934592);
}

}  // namespace
}  // namespace openmoe::parallel
