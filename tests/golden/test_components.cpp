// Each component of the tiny golden models against transformers/diffusers run
// in fp32 on the same weights: text encoders, one UNet forward (two rows at
// different timesteps, and a latent size the UNet's levels do not divide), VAE
// decode and encode.
#include <string>
#include <utility>
#include <vector>

#include "golden.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text_model.h"
#include "models/unet_2d_condition.h"
#include "nn/blocks.h"
#include "text/clip_tokenizer.h"

namespace kiln::golden {
namespace {

class Components : public ::testing::TestWithParam<std::string> {
 protected:
  std::filesystem::path model_dir() const { return data_dir() / GetParam() / "model"; }
  bool is_xl() const { return GetParam() == "sdxl"; }
};

TEST_P(Components, TextEncodersMatchTransformers) {
  const References ref(GetParam());
  std::vector<std::pair<std::string, std::string>> encoders{{"text_encoder", "tokenizer"}};
  if (is_xl()) encoders.emplace_back("text_encoder_2", "tokenizer_2");
  const std::vector<std::string> prompts{"a photo of an astronaut riding a horse on mars",
                                         "Ünïcödé ✨ 東京 (masterpiece:1.2)"};
  for (const auto& [encoder, tokenizer_name] : encoders) {
    SCOPED_TRACE(encoder);
    // The tokenizer gives the reference's ids...
    const auto tokenizer = text::ClipTokenizer::load(model_dir() / tokenizer_name);
    const Tensor expected_ids = ref.ids(encoder + ".input_ids");
    for (size_t p = 0; p < prompts.size(); ++p) {
      const std::vector<int32_t> ids = tokenizer.encode_for_model(prompts[p]);
      ASSERT_EQ(int64_t(ids.size()), expected_ids.dim(1));
      for (size_t i = 0; i < ids.size(); ++i)
        ASSERT_EQ(ids[i], expected_ids.data<int32_t>()[p * ids.size() + i])
            << "prompt \"" << prompts[p] << "\" token " << i;
    }
    // ...and the encoder the reference's states.
    const auto model = ClipTextModel::load(model_dir() / encoder, Placement{});
    const ClipTextModel::Output out = model->forward(expected_ids);
    EXPECT_LE(nmse(out.last_hidden_state, ref.get(encoder + ".last_hidden_state")), kComponentNmse);
    EXPECT_LE(nmse(out.penultimate, ref.get(encoder + ".penultimate")), kComponentNmse);
    if (ref.has(encoder + ".text_embeds"))
      EXPECT_LE(nmse(out.text_embeds, ref.get(encoder + ".text_embeds")), kComponentNmse);
    else
      EXPECT_LE(nmse(out.pooled, ref.get(encoder + ".pooled")), kComponentNmse);
  }
}

TEST_P(Components, UNetForwardMatchesDiffusers) {
  const References ref(GetParam());
  const auto unet = UNet2DConditionModel::load(model_dir() / "unet", Placement{});
  for (const std::string c : {"unet", "unet_odd"}) {
    SCOPED_TRACE(c);
    const double e = nmse(unet->forward(unet_inputs(ref, c)), ref.get(c + ".out"));
    EXPECT_LE(e, kComponentNmse);
    std::printf("[ %s ] %s nmse %.3g\n", GetParam().c_str(), c.c_str(), e);
  }
}

// The same forward with the attentions' residual adds in the LayerNorms after them
// (nn::BlockOptions::residual_in_norm, opt-in): a different order of roundings, the
// same model.
TEST_P(Components, UNetForwardWithResidualsInNormsMatchesDiffusers) {
  const References ref(GetParam());
  const auto unet = UNet2DConditionModel::load(model_dir() / "unet", Placement{});
  const bool before = nn::block_options().residual_in_norm;
  nn::block_options().residual_in_norm = true;
  const double e = nmse(unet->forward(unet_inputs(ref, "unet")), ref.get("unet.out"));
  nn::block_options().residual_in_norm = before;
  EXPECT_LE(e, kComponentNmse);
  std::printf("[ %s ] unet (residuals in norms) nmse %.3g\n", GetParam().c_str(), e);
}

TEST_P(Components, VaeDecodeAndEncodeMatchDiffusers) {
  const References ref(GetParam());
  const auto vae = AutoencoderKL::load(model_dir() / "vae", Placement{});
  const double decode = nmse(vae->decode(ref.get("vae.decode.latents")), ref.get("vae.decode.out"));
  EXPECT_LE(decode, kComponentNmse);
  const AutoencoderKL::Posterior p = vae->encode(ref.get("vae.encode.image"));
  EXPECT_LE(nmse(p.mean, ref.get("vae.encode.mean")), kComponentNmse);
  EXPECT_LE(nmse(p.logvar, ref.get("vae.encode.logvar")), kComponentNmse);
  std::printf("[ %s ] vae decode nmse %.3g\n", GetParam().c_str(), decode);
}

TEST(ComponentsLegacy, VaeWithPre014AttentionNamesDecodesTheSame) {
  // Older folders name the VAE mid-block attention query/key/value/proj_attn.
  const std::filesystem::path src = data_dir() / "sd1" / "model" / "vae";
  const std::filesystem::path dst = std::filesystem::temp_directory_path() / "kiln-legacy-vae";
  std::filesystem::remove_all(dst);
  std::filesystem::create_directories(dst);
  std::filesystem::copy_file(src / "config.json", dst / "config.json");
  const io::WeightSet weights = io::WeightSet::open(src, "diffusion_pytorch_model");
  std::vector<std::pair<std::string, Tensor>> renamed;
  for (const std::string& name : weights.names()) {
    std::string n = name;
    for (const auto& [from, to] : {std::pair<std::string, std::string>{".to_q.", ".query."},
                                   {".to_k.", ".key."},
                                   {".to_v.", ".value."},
                                   {".to_out.0.", ".proj_attn."}})
      if (auto at = n.find(from); at != std::string::npos) n.replace(at, from.size(), to);
    renamed.emplace_back(n, weights.load(name, DType::F16));
  }
  io::write_safetensors(dst / "diffusion_pytorch_model.safetensors", renamed);
  const References ref("sd1");
  const auto vae = AutoencoderKL::load(dst, Placement{});
  EXPECT_LE(nmse(vae->decode(ref.get("vae.decode.latents")), ref.get("vae.decode.out")),
            kComponentNmse);
  std::filesystem::remove_all(dst);
}

INSTANTIATE_TEST_SUITE_P(Golden, Components, ::testing::Values("sd1", "sd2v", "sdxl"));

}  // namespace
}  // namespace kiln::golden
