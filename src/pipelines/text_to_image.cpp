#include "pipelines/text_to_image.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string_view>

#include "io/safetensors.h"
#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif
#include "ops/ops.h"

namespace kiln {
namespace {

Tensor ids_tensor(const std::vector<std::vector<int32_t>>& rows) {
  const int64_t seq = int64_t(rows.at(0).size());
  Tensor t = Tensor::empty({int64_t(rows.size()), seq}, DType::I32);
  int32_t* p = t.data<int32_t>();
  for (const auto& r : rows) {
    KILN_CHECK(int64_t(r.size()) == seq, "token rows of different lengths");
    p = std::copy(r.begin(), r.end(), p);
  }
  return t;
}

Tensor filled(int64_t rows, int64_t cols, const std::vector<float>& row_values) {
  Tensor t = Tensor::empty({rows, cols}, DType::F32);
  for (int64_t r = 0; r < rows; ++r)
    std::copy(row_values.begin(), row_values.end(), t.data<float>() + r * cols);
  return t;
}

std::string format_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void require_component(const io::ModelFolder& f, const std::string& name, const std::string& cls1,
                       const std::string& cls2 = "") {
  const io::ComponentRef& c = f.component(name);
  if (c.class_name != cls1 && c.class_name != cls2)
    KILN_FAIL(f.dir().string(), ": component ", name, " is a ", c.class_name, ", kiln supports ",
              cls1, cls2.empty() ? "" : " and " + cls2);
}

}  // namespace

std::optional<SamplerKind> sampler_for_scheduler_class(const std::string& class_name) {
  if (class_name == "EulerDiscreteScheduler") return SamplerKind::Euler;
  if (class_name == "EulerAncestralDiscreteScheduler") return SamplerKind::EulerAncestral;
  if (class_name == "DDIMScheduler") return SamplerKind::DDIM;
  if (class_name == "DPMSolverMultistepScheduler") return SamplerKind::DPMPP2M;
  if (class_name == "LCMScheduler") return SamplerKind::LCM;
  if (class_name == "PNDMScheduler") return SamplerKind::PNDM;
  return std::nullopt;
}

std::unique_ptr<TextToImagePipeline> TextToImagePipeline::load(const std::filesystem::path& dir,
                                                               const Placement& placement) {
  const io::ModelFolder folder = io::ModelFolder::open(dir);
  auto p = std::unique_ptr<TextToImagePipeline>(new TextToImagePipeline());
  p->name_ = folder.name();
  p->dir_ = dir;
  p->placement_ = placement;
  const std::string& cls = folder.pipeline_class();
  if (cls == "StableDiffusionXLPipeline") {
    p->xl_ = true;
  } else if (cls != "StableDiffusionPipeline") {
    KILN_FAIL(dir.string(), ": pipeline class ", cls,
              " is not supported (StableDiffusionPipeline and StableDiffusionXLPipeline are)");
  }
  const auto& force = folder.index().find("force_zeros_for_empty_prompt");
  if (force != folder.index().end() && force->is_boolean())
    p->force_zeros_for_empty_prompt_ = force->get<bool>();

  require_component(folder, "unet", "UNet2DConditionModel");
  require_component(folder, "vae", "AutoencoderKL");
  require_component(folder, "text_encoder", "CLIPTextModel", "CLIPTextModelWithProjection");
  require_component(folder, "tokenizer", "CLIPTokenizer", "CLIPTokenizerFast");
  const io::ComponentRef& sched = folder.component("scheduler");
  p->scheduler_class_ = sched.class_name;
  p->scheduler_config_ = io::read_json(sched.dir / "scheduler_config.json");
  if (!p->scheduler_config_.is_object())
    KILN_FAIL((sched.dir / "scheduler_config.json").string(), " is not a JSON object");

  p->tokenizer_ = std::make_unique<text::ClipTokenizer>(
      text::ClipTokenizer::load(folder.component("tokenizer").dir));
  p->text_encoder_ = ClipTextModel::load(folder.component("text_encoder").dir, placement);
  if (p->xl_) {
    require_component(folder, "text_encoder_2", "CLIPTextModelWithProjection");
    require_component(folder, "tokenizer_2", "CLIPTokenizer", "CLIPTokenizerFast");
    p->tokenizer_2_ = std::make_unique<text::ClipTokenizer>(
        text::ClipTokenizer::load(folder.component("tokenizer_2").dir));
    p->text_encoder_2_ = ClipTextModel::load(folder.component("text_encoder_2").dir, placement);
  }
  p->unet_ = UNet2DConditionModel::load(folder.component("unet").dir, placement);
  if (DenoiserGraphs::enabled_for(placement.device))
    p->graphs_ = std::make_unique<DenoiserGraphs>(*p->unet_, device_mutex());
#if defined(KILN_WITH_CUDA)
  if (placement.device == Device::CUDA) p->step_fence_ = std::make_shared<cuda::StreamFence>();
#endif
  // SDXL's VAE overflows in fp16: diffusers upcasts it to fp32 when its config says
  // force_upcast (the default), and so does kiln. bf16 has the range and stays.
  Placement vae_placement = placement;
  const std::filesystem::path vae_dir = folder.component("vae").dir;
  if (p->xl_ && placement.dtype == DType::F16 &&
      ModelConfig::load(vae_dir).boolean("force_upcast", true))
    vae_placement.dtype = DType::F32;
  p->vae_ = AutoencoderKL::load(vae_dir, vae_placement);
  const char* decode_graphs = std::getenv("KILN_CUDA_DECODE_GRAPHS");
  if (GraphCache::enabled_for(placement.device) &&
      !(decode_graphs && std::string_view(decode_graphs) == "0")) {
    size_t budget = 0;
#if defined(KILN_WITH_CUDA)
    budget = cuda::device_info().total_memory / 16;
#endif
    const AutoencoderKL* vae = p->vae_.get();
    p->decoder_graphs_ = std::make_unique<GraphCache>(
        "the VAE decoder", [vae](const std::vector<Tensor>& in) { return vae->decode(in[0]); },
        device_mutex(), /*max_graphs=*/4, budget);
  }

  const int64_t context_dim =
      p->xl_ ? p->text_encoder_->config().hidden_size + p->text_encoder_2_->config().hidden_size
             : p->text_encoder_->config().hidden_size;
  for (int64_t d : p->unet_->config().cross_attention_dim)
    if (d != context_dim)
      KILN_FAIL(dir.string(), ": the UNet attends to ", d,
                "-wide text states but the text "
                "encoder",
                p->xl_ ? "s give " : " gives ", context_dim);
  if (p->unet_->config().in_channels != p->vae_->config().latent_channels)
    KILN_FAIL(dir.string(), ": the UNet takes ", p->unet_->config().in_channels,
              " channels but the VAE's latents have ", p->vae_->config().latent_channels);
  p->native_size_ = int(p->unet_->config().sample_size * p->vae_->config().scale_factor());
  return p;
}

ResolvedRequest TextToImagePipeline::resolve(const TextToImageRequest& request) const {
  ResolvedRequest r;
  r.request = request;
  TextToImageRequest& q = r.request;
  if (q.width == 0) q.width = native_size_;
  if (q.height == 0) q.height = native_size_;
  if (q.width < 8 || q.height < 8 || q.width % 8 != 0 || q.height % 8 != 0)
    KILN_FAIL("width and height must be positive multiples of 8, got ", q.width, "x", q.height);
  const int factor = int(vae_->config().scale_factor());
  if (q.width % factor != 0 || q.height % factor != 0)
    KILN_FAIL("width and height must be multiples of the VAE's factor ", factor, ", got ", q.width,
              "x", q.height);
  if (int64_t(q.width) * q.height > int64_t(4096) * 4096)
    KILN_FAIL("image size ", q.width, "x", q.height, " is larger than 4096x4096");
  if (q.num_inference_steps < 1 || q.num_inference_steps > 1000)
    KILN_FAIL("steps must be between 1 and 1000, got ", q.num_inference_steps);
  r.guidance_scale = q.guidance_scale.value_or(xl_ ? 5.0f : 7.5f);
  if (!std::isfinite(r.guidance_scale) || r.guidance_scale < 0.0f || r.guidance_scale > 100.0f)
    KILN_FAIL("guidance scale must be between 0 and 100, got ", r.guidance_scale);
  q.guidance_scale = r.guidance_scale;
  if (q.sampler) {
    r.sampler = *q.sampler;
  } else {
    r.sampler = sampler_for_scheduler_class(scheduler_class_).value_or(SamplerKind::Euler);
    q.sampler = r.sampler;
  }
  return r;
}

void TextToImagePipeline::encode_prompts(Generation& g) const {
  const TextToImageRequest& q = g.request_.request;
  const std::string negative = q.negative_prompt.value_or("");
  if (!xl_) {
    // SD 1.x/2.x: the final hidden states; rows (negative, prompt) with CFG.
    std::vector<std::vector<int32_t>> rows;
    if (g.cfg_) rows.push_back(tokenizer_->encode_for_model(negative));
    rows.push_back(tokenizer_->encode_for_model(q.prompt));
    g.context_ = text_encoder_->forward(ids_tensor(rows)).last_hidden_state;  // [rows, 77, D]
    return;
  }
  // SDXL: both encoders' penultimate states side by side; pooled projection of
  // the second. A negative prompt left unset is all zeros when the model says so.
  const bool zero_negative = g.cfg_ && !q.negative_prompt && force_zeros_for_empty_prompt_;
  std::vector<std::string> texts;
  if (g.cfg_ && !zero_negative) texts.push_back(negative);
  texts.push_back(q.prompt);
  std::vector<std::vector<int32_t>> rows1, rows2;
  for (const std::string& t : texts) {
    rows1.push_back(tokenizer_->encode_for_model(t));
    rows2.push_back(tokenizer_2_->encode_for_model(t));
  }
  const ClipTextModel::Output a = text_encoder_->forward(ids_tensor(rows1));
  const ClipTextModel::Output b = text_encoder_2_->forward(ids_tensor(rows2));
  Tensor context = ops::concat_last({a.penultimate, b.penultimate});  // [n, 77, D1 + D2]
  Tensor pooled = b.text_embeds;                                      // [n, P]
  if (zero_negative) {
    context = ops::concat_rows(
        {Tensor::zeros(context.shape(), context.dtype(), context.device()), context});
    pooled =
        ops::concat_rows({Tensor::zeros(pooled.shape(), pooled.dtype(), pooled.device()), pooled});
  }
  g.context_ = context;
  g.text_embeds_ = pooled;
}

std::unique_ptr<Generation> TextToImagePipeline::start(const ResolvedRequest& r) const {
  const TextToImageRequest& q = r.request;
  const UNetConfig& uc = unet_->config();
  auto g = std::unique_ptr<Generation>(new Generation(r));
  std::shared_lock<std::shared_mutex> device(device_mutex());  // no capture meanwhile
  // Guidance-distilled (LCM) UNets take the guidance as an embedding instead of CFG.
  const bool distilled = uc.time_cond_proj_dim > 0;
  g->cfg_ = r.guidance_scale > 1.0f && !distilled;
  const int64_t rows = g->rows();

  encode_prompts(*g);
  g->scheduler_ = make_scheduler(r.sampler, q.schedule, scheduler_config_);
  g->scheduler_->set_timesteps(q.num_inference_steps);
  if (xl_) {
    const float h = float(q.height), w = float(q.width);
    g->time_ids_ = filled(rows, 6, {h, w, 0.0f, 0.0f, h, w});  // original, crop, target
  }
  if (distilled) {
    const std::vector<float> w(size_t(rows), (r.guidance_scale - 1.0f) * 1000.0f);
    g->timestep_cond_ = ops::timestep_embedding(Tensor::from_floats({rows}, w.data()),
                                                int(uc.time_cond_proj_dim), false, 1.0f);
  }
  // The initial noise: the generator's first draws, as diffusers' prepare_latents.
  const int64_t factor = vae_->config().scale_factor();
  const Tensor noise =
      g->generator_.randn_nhwc(1, uc.in_channels, q.height / factor, q.width / factor);
  g->latents_ = ops::cast(
      ops::scale(noise.to(placement_.device), g->scheduler_->init_noise_sigma()), DType::F32);
  return g;
}

void TextToImagePipeline::step(const std::vector<Generation*>& batch) const {
  if (batch.empty()) return;
  // This thread's device work outside the graph caches holds the device shared: a
  // capture on another thread (the server decodes on its side thread) records
  // everything queued on the stream, and would take these ops into its graph. The
  // caches take the lock themselves (exclusively to capture), so it is let go around
  // the denoiser's call.
  std::shared_lock<std::shared_mutex> device(device_mutex());
#if defined(KILN_WITH_CUDA)
  // Between steps, not inside one: the previous step is done on the GPU before this
  // one is queued (cuda::StreamFence says why).
  if (step_fence_) static_cast<cuda::StreamFence*>(step_fence_.get())->wait_and_mark();
#endif
  const Generation& first = *batch.front();
  std::vector<Tensor> samples, contexts, text_embeds, time_ids, conds;
  std::vector<float> timesteps;
  for (Generation* g : batch) {
    KILN_CHECK(!g->done(), "step() on a finished generation");
    KILN_CHECK(
        g->latent_height() == first.latent_height() && g->latent_width() == first.latent_width(),
        "a denoiser batch mixes latent sizes ", first.latent_height(), "x", first.latent_width(),
        " and ", g->latent_height(), "x", g->latent_width());
    const Tensor rows = g->cfg_ ? ops::concat_rows({g->latents_, g->latents_}) : g->latents_;
    samples.push_back(g->scheduler_->scale_model_input(rows, g->step_));
    timesteps.insert(timesteps.end(), size_t(g->rows()),
                     g->scheduler_->timesteps()[size_t(g->step_)]);
    contexts.push_back(g->context_);
    if (xl_) {
      text_embeds.push_back(g->text_embeds_);
      time_ids.push_back(g->time_ids_);
    }
    if (g->timestep_cond_.defined()) conds.push_back(g->timestep_cond_);
  }
  // One denoiser call over every row; each row carries its own timestep.
  UNet2DConditionModel::Inputs in;
  auto join = [](const std::vector<Tensor>& parts) {
    return parts.size() == 1 ? parts[0] : ops::concat_rows(parts);
  };
  in.sample = join(samples);
  in.timesteps = Tensor::from_floats({int64_t(timesteps.size())}, timesteps.data());
  in.encoder_hidden_states = join(contexts);
  if (xl_) {
    in.text_embeds = join(text_embeds);
    in.time_ids = join(time_ids);
  }
  if (!conds.empty()) in.timestep_cond = join(conds);
  Tensor predicted;
  if (graphs_) {
    device.unlock();
    predicted = graphs_->forward(in);
    device.lock();
  } else {
    predicted = unet_->forward(in);
  }
  const Tensor out = ops::cast(predicted, DType::F32);  // [rows, h, w, C]

  int64_t row = 0;
  for (Generation* g : batch) {
    Tensor noise_pred = out.rows(row, row + g->rows());
    row += g->rows();
    if (g->cfg_) {
      // uncond + g · (cond − uncond)
      const float w = g->request_.guidance_scale;
      noise_pred =
          ops::linear_combination({{1.0f - w, noise_pred.rows(0, 1)}, {w, noise_pred.rows(1, 2)}});
    }
    g->latents_ = g->scheduler_->step(noise_pred, g->step_, g->latents_, g->generator_);
    ++g->step_;
  }
}

std::shared_mutex& TextToImagePipeline::device_mutex() {
  static std::shared_mutex mutex;
  return mutex;
}

void TextToImagePipeline::warm_up(int width, int height, int batch, bool cfg, int calls) const {
  TextToImageRequest request;
  request.prompt = "a photograph of an astronaut riding a horse";
  request.width = width;
  request.height = height;
  request.num_inference_steps = std::max(1, calls);
  if (!cfg) request.guidance_scale = 1.0f;
  const ResolvedRequest resolved = resolve(request);
  std::vector<std::unique_ptr<Generation>> generations;
  std::vector<Generation*> step_batch;
  for (int i = 0; i < batch; ++i) {
    generations.push_back(start(resolved));
    step_batch.push_back(generations.back().get());
  }
  for (int i = 0; i < request.num_inference_steps; ++i) step(step_batch);
  (void)decode(*generations.front());
}

void TextToImagePipeline::warm_up_buckets(int max_generations,
                                          const std::function<void(int)>& done) const {
  std::vector<int> counts;  // the largest count of each bucket, ascending
  for (int n = max_generations; n >= 1; --n)
    if (counts.empty() || DenoiserGraphs::bucket_rows(2 * n) !=
                              DenoiserGraphs::bucket_rows(2 * int64_t(counts.back())))
      counts.push_back(n);
  std::reverse(counts.begin(), counts.end());
  for (int n : counts) {
    warm_up(0, 0, n, /*cfg=*/true, /*calls=*/2);
    if (done) done(n);
  }
}

io::Image TextToImagePipeline::decode(const Generation& g) const {
  return decode_latents(g.latents_);
}

io::Image TextToImagePipeline::decode_latents(const Tensor& latents) const {
  // Latents → VAE input: SDXL-style per-channel statistics when the VAE has them.
  const VaeConfig& vc = vae_->config();
  std::shared_lock<std::shared_mutex> device(device_mutex());  // no capture meanwhile
  Tensor z;
  if (xl_ && !vc.latents_mean.empty()) {
    std::vector<float> mul, add;
    for (size_t ch = 0; ch < vc.latents_mean.size(); ++ch) {
      mul.push_back(float(vc.latents_std[ch] / vc.scaling_factor));
      add.push_back(float(vc.latents_mean[ch]));
    }
    const int64_t n = int64_t(mul.size());
    z = ops::add(ops::mul(latents, ops::to(Tensor::from_floats({n}, mul.data()), latents.device(),
                                           DType::F32)),
                 ops::to(Tensor::from_floats({n}, add.data()), latents.device(), DType::F32));
  } else {
    z = ops::scale(latents, float(1.0 / vc.scaling_factor));
  }
  Tensor decoded;
  if (decoder_graphs_ && z.dim(1) * z.dim(2) <= kGraphedDecodeLatentPixels) {
    device.unlock();  // the cache takes the lock itself, exclusively to capture
    decoded = decoder_graphs_->run({z}, z.dim(0), z.dim(0));
    device.lock();
  } else {
    decoded = vae_->decode(z);
  }
  decoded = ops::cast(decoded, DType::F32).to(Device::CPU);  // [1, H, W, 3]

  // diffusers' postprocess: (x / 2 + 0.5) clamped to [0, 1], × 255, rounded half to even.
  io::Image image;
  image.width = int(decoded.dim(2));
  image.height = int(decoded.dim(1));
  image.channels = int(decoded.dim(3));
  image.pixels.resize(size_t(decoded.numel()));
  const float* px = decoded.data<float>();
  for (size_t i = 0; i < image.pixels.size(); ++i) {
    const float v = std::clamp(px[i] / 2.0f + 0.5f, 0.0f, 1.0f);
    image.pixels[i] = uint8_t(std::nearbyint(v * 255.0f));
  }
  return image;
}

io::Image TextToImagePipeline::generate(const ResolvedRequest& r,
                                        const ProgressFn& progress) const {
  const std::unique_ptr<Generation> g = start(r);
  while (!g->done()) {
    step({g.get()});
    if (progress && !progress({g->steps_done(), g->total_steps()})) throw Cancelled();
  }
  return decode(*g);
}

std::string TextToImagePipeline::a1111_parameters(const ResolvedRequest& r) const {
  const TextToImageRequest& q = r.request;
  std::ostringstream os;
  os << q.prompt << "\n";
  if (q.negative_prompt && !q.negative_prompt->empty())
    os << "Negative prompt: " << *q.negative_prompt << "\n";
  os << "Steps: " << q.num_inference_steps
     << ", Sampler: " << a1111_sampler_name(r.sampler, q.schedule)
     << ", CFG scale: " << format_number(r.guidance_scale) << ", Seed: " << q.seed
     << ", Size: " << q.width << "x" << q.height << ", Model: " << name_ << ", Version: kiln "
     << KILN_VERSION;
  return os.str();
}

std::string TextToImagePipeline::describe() const {
  std::ostringstream os;
  const UNetConfig& u = unet_->config();
  const VaeConfig& v = vae_->config();
  os << "model: " << dir_.string() << "\n";
  os << "pipeline: " << (xl_ ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline") << "\n";
  auto encoder = [&](const char* label, const ClipTextModel& m, const text::ClipTokenizer& t) {
    const ClipTextConfig& c = m.config();
    os << label << ": CLIPText" << (c.projection_dim ? "ModelWithProjection" : "Model") << ", "
       << c.num_hidden_layers << " layers, hidden " << c.hidden_size << ", "
       << c.num_attention_heads << " heads"
       << (c.projection_dim ? ", projection " + std::to_string(c.projection_dim) : "")
       << "; tokenizer vocab " << t.vocab_size() << ", max length " << t.max_length() << "\n";
  };
  encoder("text_encoder", *text_encoder_, *tokenizer_);
  if (xl_) encoder("text_encoder_2", *text_encoder_2_, *tokenizer_2_);
  os << "unet: UNet2DConditionModel, channels";
  for (int64_t c : u.block_out_channels) os << " " << c;
  os << ", cross-attention " << u.cross_attention_dim[0] << ", sample size " << u.sample_size
     << (u.addition_text_time ? ", text_time conditioning" : "")
     << (u.time_cond_proj_dim ? ", guidance embedding" : "") << "\n";
  os << "vae: AutoencoderKL, channels";
  for (int64_t c : v.block_out_channels) os << " " << c;
  os << ", latent channels " << v.latent_channels << ", factor " << v.scale_factor()
     << ", scaling factor " << format_number(v.scaling_factor) << "\n";
  const auto own = sampler_for_scheduler_class(scheduler_class_);
  os << "scheduler: " << scheduler_class_ << " (prediction "
     << scheduler_config_.value("prediction_type", std::string("epsilon")) << "); default sampler "
     << sampler_name(own.value_or(SamplerKind::Euler))
     << (own ? "" : " (kiln does not implement " + scheduler_class_ + ")") << "\n";
  os << "native size: " << native_size_ << "x" << native_size_ << ", default guidance "
     << (xl_ ? "5" : "7.5") << ", default steps 50\n";
  os << "device: " << device_name(placement_.device) << ", dtype " << dtype_name(placement_.dtype)
     << (xl_ && placement_.dtype == DType::F16 && vae_->config().force_upcast
             ? " (VAE in f32: force_upcast)"
             : "");
  return os.str();
}

}  // namespace kiln
