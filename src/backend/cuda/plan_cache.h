// The plan cache as gemm.cpp and conv.cu see it: look a shape's choice up in this
// GPU's file, record a choice just timed. Internal to src/backend/cuda/.
#pragma once

#include <optional>
#include <string>

#include "backend/plan_file.h"

namespace kiln::cuda {

// The stored choice for `key`, reading this GPU's file on first use.
std::optional<plans::GemmChoice> stored_gemm_plan(const std::string& key);
std::optional<plans::ConvChoice> stored_conv_plan(const std::string& key);
std::optional<plans::AttentionChoice> stored_attention_plan(const std::string& key);
// A stored choice passed its checks and is in use (plan_stats().reused).
void count_reused_plan();
// A choice just made by timing, to be saved by save_plans().
void record_gemm_plan(const std::string& key, const plans::GemmChoice& choice);
void record_conv_plan(const std::string& key, const plans::ConvChoice& choice);
void record_attention_plan(const std::string& key, const plans::AttentionChoice& choice);

// forget_plans(): each file drops the plans it holds in memory.
void forget_gemm_plans();
void forget_conv_plans();
void forget_attention_plans();

}  // namespace kiln::cuda
