// The plan cache's file (backend/plan_file.h): round trips, the header check that
// keeps plans from another GPU, kiln or library out, damaged files, atomic and
// merging saves, and where the folder is. The CUDA side is tested on the GPU
// (tests/backend/test_cuda_runtime.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <functional>
#include <map>

#include "backend/plan_file.h"
#include "io/image.h"
#include "kiln/error.h"

namespace kiln::plans {
namespace {

namespace fs = std::filesystem;

Header test_header() {
  Header h;
  h.kiln = "0.1.0 (0123456789ab)";
  h.gpu = "NVIDIA H100 80GB HBM3";
  h.compute_major = 9;
  h.compute_minor = 0;
  h.multiprocessors = 132;
  h.cublaslt = "13.0.0";
  h.cudnn = "9.19.0";
  h.cuda_runtime = "13.0";
  h.cuda_driver = "13.0";
  return h;
}

GemmChoice gemm_choice(uint8_t seed, uint64_t workspace) {
  GemmChoice c;
  c.valid = true;
  for (size_t i = 0; i < c.algo.size(); ++i) c.algo[i] = uint8_t(seed + 37 * i);
  c.workspace = workspace;
  return c;
}

Plans test_plans() {
  Plans p;
  p.gemm["m4096 n320 k320 f16"] = gemm_choice(1, 1 << 20);
  p.gemm["m77 n768 k768 f16"] = gemm_choice(200, 0);
  p.gemm["m3 n5 k7 f32"] = GemmChoice{};  // no algorithm: remembered too
  p.conv["n2 h64 w64 c320 o320 k3x3 f16"] = ConvChoice{true, 1, 1, 4096, true};
  p.conv["n1 h128 w128 c512 o512 k3x3 f16"] = ConvChoice{true, 6, 2, 0, false};
  p.conv["n1 h7 w7 c3 o5 k3x3 f16"] = ConvChoice{};
  p.conv["n2 h64 w64 c320 o4 k3x3 f16"] = ConvChoice{true, kConvNarrowAlgo, 0, 0, false};
  p.conv["n2 h8 w8 c1280 o1280 k3x3 f16"] = ConvChoice{true, kConvIm2colAlgo, 0, 0, false};
  p.attention["b2 h8 sq4096 sk77 d40 f16"] = AttentionChoice{true, 2};
  p.attention["b1 h1 sq19 sk19 d64 bf16"] = AttentionChoice{};
  return p;
}

// A fresh folder under the system's temporary one, removed afterwards.
class PlanFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kiln-plan-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path file() const { return dir_ / file_name(test_header()); }
  void write(const std::string& text) const { io::write_file_atomic(file(), text); }

  fs::path dir_;
};

TEST(PlanFormat, SerializeThenParseGivesTheSameHeaderAndPlans) {
  const auto [header, plans] = parse(serialize(test_header(), test_plans()));
  EXPECT_EQ(header, test_header()) << serialize(header, {});
  EXPECT_EQ(plans, test_plans()) << serialize(header, plans);
}

TEST(PlanFormat, AlgorithmBytesAreKeptAsHex) {
  Plans p;
  p.gemm["k"] = gemm_choice(0, 0);
  p.gemm["k"].algo[0] = 0xab;
  p.gemm["k"].algo[63] = 0x0f;
  const std::string text = serialize(test_header(), p);
  EXPECT_NE(text.find("\"ab"), std::string::npos) << text;
  EXPECT_NE(text.find("0f\""), std::string::npos) << text;
}

TEST(PlanFormat, FileNameIsTheGpuNameAndComputeCapability) {
  EXPECT_EQ(file_name(test_header()), "nvidia-h100-80gb-hbm3-sm90.json");
  Header odd = test_header();
  odd.gpu = "  ../Weird GPU (rev 2)/ ";
  odd.compute_major = 8;
  odd.compute_minor = 6;
  EXPECT_EQ(file_name(odd), "weird-gpu-rev-2-sm86.json");
}

TEST(PlanFormat, KilnVersionNamesTheProjectVersion) {
  EXPECT_EQ(kiln_version().rfind(KILN_VERSION, 0), 0u) << kiln_version();
}

TEST_F(PlanFile, ASavedFileLoadsBack) {
  EXPECT_EQ(save(file(), test_header(), test_plans()), test_plans().size());
  const Loaded loaded = load(file(), test_header());
  EXPECT_EQ(loaded.note, "");
  EXPECT_EQ(loaded.plans, test_plans());
}

TEST_F(PlanFile, AMissingFileGivesNoPlansAndNoNote) {
  const Loaded loaded = load(file(), test_header());
  EXPECT_EQ(loaded.note, "");
  EXPECT_EQ(loaded.plans.size(), 0u);
}

TEST_F(PlanFile, AnyHeaderDifferenceDropsTheEntries) {
  const std::map<std::string, std::function<void(Header&)>> changes = {
      {"format", [](Header& h) { h.format = kFormatVersion + 1; }},
      {"kiln 0.0.9", [](Header& h) { h.kiln = "0.0.9"; }},
      {"NVIDIA A100", [](Header& h) { h.gpu = "NVIDIA A100-SXM4-80GB"; }},
      {"compute capability 8.0", [](Header& h) { h.compute_major = 8; }},
      {"114 SMs", [](Header& h) { h.multiprocessors = 114; }},
      {"cuBLASLt 12.9.1", [](Header& h) { h.cublaslt = "12.9.1"; }},
      {"cuDNN none", [](Header& h) { h.cudnn = "none"; }},
      {"CUDA runtime 12.9", [](Header& h) { h.cuda_runtime = "12.9"; }},
      {"CUDA driver 12.8", [](Header& h) { h.cuda_driver = "12.8"; }},
  };
  for (const auto& [reason, change] : changes) {
    Header other = test_header();
    change(other);
    write(serialize(other, test_plans()));
    const Loaded loaded = load(file(), test_header());
    EXPECT_EQ(loaded.plans.size(), 0u) << reason;
    EXPECT_NE(loaded.note.find("rebuilt"), std::string::npos) << loaded.note;
    EXPECT_NE(loaded.note.find(reason), std::string::npos)
        << "expected the note to say \"" << reason << "\"; it was: " << loaded.note;
  }
}

TEST_F(PlanFile, ADamagedFileIsIgnoredWithANoteAndNeverThrows) {
  const std::string good = serialize(test_header(), test_plans());
  std::string bad_hex = good;
  bad_hex.replace(bad_hex.find("\"algo\": \"") + 9, 2, "zz");
  std::string short_hex = good;
  short_hex.erase(short_hex.find("\"algo\": \"") + 9, 2);
  std::string wrong_type = good;
  wrong_type.replace(wrong_type.find("\"multiprocessors\": 132"), 22, "\"multiprocessors\": \"x\"");
  std::string bad_enum = good;
  bad_enum.replace(bad_enum.find("\"math_type\": 1"), 14, "\"math_type\": 999");
  std::string bad_algo = good;
  const std::string im2col_algo = "\"algo\": -2";  // made -3, below kiln's own codes
  bad_algo.replace(bad_algo.find(im2col_algo), im2col_algo.size(), "\"algo\": -3");
  std::string bad_kernel = good;
  bad_kernel.replace(bad_kernel.find("\"cudnn\""), 7, "\"cublas\"");
  std::string bad_plan = good;
  bad_plan.replace(bad_plan.find("\"plan\": 2"), 9, "\"plan\": -3");
  const std::map<std::string, std::string> damaged = {
      {"truncated", good.substr(0, good.size() / 2)},
      {"empty", ""},
      {"not JSON", "\x89PNG\r\n\x1a\n garbage"},
      {"an array", "[1, 2, 3]"},
      {"no header", R"({"gemm": {}, "conv": {}, "attention": {}})"},
      {"gemm not an object", good.substr(0, good.find("\"gemm\"")) + "\"gemm\": [], \"conv\": {}}"},
      {"bad hex digit", bad_hex},
      {"short algorithm", short_hex},
      {"wrong type", wrong_type},
      {"out-of-range enum", bad_enum},
      {"unknown convolution path", bad_algo},
      {"unknown attention kernel", bad_kernel},
      {"negative attention plan", bad_plan},
  };
  for (const auto& [what, text] : damaged) {
    write(text);
    Loaded loaded;
    EXPECT_NO_THROW(loaded = load(file(), test_header())) << what;
    EXPECT_EQ(loaded.plans.size(), 0u) << what;
    EXPECT_NE(loaded.note.find("unreadable"), std::string::npos) << what << ": " << loaded.note;
  }
}

// A file of the format before attention kernels were kept (no "attention" part) is
// rebuilt for its format, not reported as damaged.
TEST_F(PlanFile, AnOlderFormatIsRebuiltNotCalledDamaged) {
  Header old = test_header();
  old.format = 1;
  Plans plans = test_plans();
  plans.attention.clear();
  std::string text = serialize(old, plans);
  const std::string part = "\"attention\": {},";
  ASSERT_NE(text.find(part), std::string::npos) << text;
  text.erase(text.find(part), part.size());
  write(text);
  const Loaded loaded = load(file(), test_header());
  EXPECT_EQ(loaded.plans.size(), 0u);
  EXPECT_NE(loaded.note.find("in format 1"), std::string::npos) << loaded.note;
}

TEST_F(PlanFile, SaveLeavesNoTemporaryFiles) {
  save(file(), test_header(), test_plans());
  save(file(), test_header(), test_plans());
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_))
    names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{file().filename().string()});
}

TEST_F(PlanFile, SaveKeepsEntriesAnotherProcessWrote) {
  Plans theirs, ours;
  theirs.gemm["theirs"] = gemm_choice(1, 10);
  theirs.gemm["both"] = gemm_choice(2, 20);
  theirs.conv["theirs"] = ConvChoice{true, 1, 1, 0, false};
  ours.gemm["ours"] = gemm_choice(3, 30);
  ours.gemm["both"] = gemm_choice(4, 40);
  save(file(), test_header(), theirs);
  EXPECT_EQ(save(file(), test_header(), ours), 4u);
  const Plans on_disk = load(file(), test_header()).plans;
  EXPECT_EQ(on_disk.gemm.at("theirs"), theirs.gemm.at("theirs"));
  EXPECT_EQ(on_disk.conv.at("theirs"), theirs.conv.at("theirs"));
  EXPECT_EQ(on_disk.gemm.at("ours"), ours.gemm.at("ours"));
  EXPECT_EQ(on_disk.gemm.at("both"), ours.gemm.at("both")) << "the newer choice wins";
}

TEST_F(PlanFile, SaveOverAForeignFileDropsItsEntries) {
  Header other = test_header();
  other.gpu = "NVIDIA A100-SXM4-80GB";
  Plans theirs;
  theirs.gemm["theirs"] = gemm_choice(1, 10);
  write(serialize(other, theirs));
  Plans ours;
  ours.gemm["ours"] = gemm_choice(3, 30);
  EXPECT_EQ(save(file(), test_header(), ours), 1u);
  const auto [header, plans] = parse(io::read_file(file()));
  EXPECT_EQ(header, test_header());
  EXPECT_EQ(plans, ours);
}

TEST_F(PlanFile, SaveOverADamagedFileReplacesIt) {
  write("{\"header\": {\"format\": 1,");
  save(file(), test_header(), test_plans());
  EXPECT_EQ(load(file(), test_header()).plans, test_plans());
}

TEST_F(PlanFile, SaveIntoAMissingFolderIsAnError) {
  EXPECT_THROW(save(dir_ / "missing" / "x.json", test_header(), test_plans()), Error);
}

TEST_F(PlanFile, AFolderThatIsAFileIsNotWritable) {
  write("x");
  EXPECT_NE(check_writable(file()), "");
  EXPECT_EQ(check_writable(dir_ / "new" / "folder"), "");
  EXPECT_TRUE(fs::is_directory(dir_ / "new" / "folder"));
}

TEST(PlanFolder, FlagThenKilnPlanCacheThenXdgThenHome) {
  std::map<std::string, std::string> vars;
  const Environment env = [&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  EXPECT_EQ(folder("", env), std::nullopt) << "no HOME: memory only";
  vars["HOME"] = "/home/u";
  EXPECT_EQ(folder("", env), fs::path("/home/u/.cache/kiln/plans"));
  vars["XDG_CACHE_HOME"] = "relative/ignored";
  EXPECT_EQ(folder("", env), fs::path("/home/u/.cache/kiln/plans"));
  vars["XDG_CACHE_HOME"] = "/xdg";
  EXPECT_EQ(folder("", env), fs::path("/xdg/kiln/plans"));
  vars["KILN_PLAN_CACHE"] = "/env/plans";
  EXPECT_EQ(folder("", env), fs::path("/env/plans"));
  EXPECT_EQ(folder("/flag/plans", env), fs::path("/flag/plans"));
  EXPECT_EQ(folder("off", env), std::nullopt);
  vars["KILN_PLAN_CACHE"] = "off";
  EXPECT_EQ(folder("", env), std::nullopt);
  EXPECT_EQ(folder("/flag/plans", env), fs::path("/flag/plans")) << "the flag wins over the env";
}

}  // namespace
}  // namespace kiln::plans
