#include "model_source.h"

#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "io/model_folder.h"
#include "io/safetensors.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Architectures as tools/py/make_full_size_model.py and the peer benchmark build them.
const char* kSd15Unet = R"({"_class_name": "UNet2DConditionModel", "sample_size": 64,
  "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
  "block_out_channels": [320, 640, 1280, 1280],
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32})";
const char* kSdxlUnet = R"({"_class_name": "UNet2DConditionModel", "sample_size": 128,
  "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
  "block_out_channels": [320, 640, 1280],
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,
  "attention_head_dim": [5, 10, 20], "use_linear_projection": true,
  "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
  "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32})";
const char* kSdVae = R"({"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
  "latent_channels": 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "norm_num_groups": 32, "sample_size": 512})";
const char* kClipL = R"({"architectures": ["CLIPTextModel"], "vocab_size": 49408,
  "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
  "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
  "bos_token_id": 49406, "eos_token_id": 49407, "projection_dim": 768})";
const char* kClipBigG = R"({"architectures": ["CLIPTextModelWithProjection"], "vocab_size": 49408,
  "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
  "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu",
  "bos_token_id": 49406, "eos_token_id": 49407, "projection_dim": 1280})";
const char* kScheduler = R"({"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012,
  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
  "steps_offset": 1, "timestep_spacing": "leading"})";

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path);
  out << text;
  if (!out) KILN_FAIL("cannot write ", path.string());
}

// A diffusers folder with the architecture's configs, the embedded model's
// tokenizer and empty weight files: with nn::RandomWeights on, loading it draws
// every weight.
void write_random_folder(const fs::path& dir, bool xl) {
  fs::create_directories(dir);
  json index = {{"_class_name", xl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline"},
                {"scheduler", {"diffusers", "EulerDiscreteScheduler"}},
                {"text_encoder", {"transformers", "CLIPTextModel"}},
                {"tokenizer", {"transformers", "CLIPTokenizer"}},
                {"unet", {"diffusers", "UNet2DConditionModel"}},
                {"vae", {"diffusers", "AutoencoderKL"}}};
  const fs::path tokenizer = default_model_dir() / "tokenizer";
  auto add_tokenizer = [&](const std::string& name) {
    fs::create_directories(dir / name);
    for (const auto& entry : fs::directory_iterator(tokenizer))
      fs::copy_file(entry.path(), dir / name / entry.path().filename(),
                    fs::copy_options::overwrite_existing);
  };
  add_tokenizer("tokenizer");
  write_text(dir / "scheduler/scheduler_config.json", kScheduler);
  write_text(dir / "text_encoder/config.json", kClipL);
  write_text(dir / "unet/config.json", xl ? kSdxlUnet : kSd15Unet);
  json vae = json::parse(kSdVae);
  if (xl) {
    vae["scaling_factor"] = 0.13025;
    vae["sample_size"] = 1024;
  }
  write_text(dir / "vae/config.json", vae.dump());
  io::write_safetensors(dir / "text_encoder/model.safetensors", {});
  io::write_safetensors(dir / "unet/diffusion_pytorch_model.safetensors", {});
  io::write_safetensors(dir / "vae/diffusion_pytorch_model.safetensors", {});
  if (xl) {
    index["text_encoder_2"] = {"transformers", "CLIPTextModelWithProjection"};
    index["tokenizer_2"] = {"transformers", "CLIPTokenizer"};
    add_tokenizer("tokenizer_2");
    write_text(dir / "text_encoder_2/config.json", kClipBigG);
    io::write_safetensors(dir / "text_encoder_2/model.safetensors", {});
  }
  write_text(dir / "model_index.json", index.dump(1));
}

}  // namespace

ModelSource::ModelSource(const std::optional<std::string>& model,
                         const std::optional<std::string>& arch, const std::string& tool) {
  const std::string name = arch.value_or("sd15");
  if (name != "sd15" && name != "sdxl") throw UsageError("--arch is sd15 or sdxl, got " + name);
  if (model && arch) throw UsageError("give --model or --arch, not both");
  if (model) {
    dir_ = *model;
    xl_ = io::ModelFolder::open(dir_).pipeline_class() == "StableDiffusionXLPipeline";
    label_ = dir_.string();
    return;
  }
  xl_ = name == "sdxl";
  label_ = "random " + name;
  dir_ = fs::temp_directory_path() / str("kiln-", tool, "-", name, "-", getpid());
  temporary_ = true;
  try {
    write_random_folder(dir_, xl_);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    throw;
  }
  random_.emplace(0);
}

ModelSource::~ModelSource() {
  std::error_code ec;
  if (temporary_) fs::remove_all(dir_, ec);
}

}  // namespace kiln::cli
