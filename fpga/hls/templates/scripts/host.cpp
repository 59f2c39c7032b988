// XRT host program of mmf_kernel: loads the xclbin and the parameter blob, feeds a prompt,
// then streams greedy tokens one kernel call at a time (the recurrent state stays on chip).
//
// Build: make -f scripts/Makefile host     (needs XRT: g++ -std=c++17 ... -lxrt_coreutil)
// Run:   build/mmf_host build/mmf_kernel.hw.xclbin weights/mmf_weights.bin "ROMEO." 200 [device]
// A byte-level model (V = 256) prints text; other vocabularies print token ids.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <xrt/xrt_bo.h>
#include <xrt/xrt_device.h>
#include <xrt/xrt_kernel.h>

#include "mmf_kernel.h"

namespace {

void print_token(int32_t tok) {
    if (MMF_V == 256) {
        std::putchar(static_cast<unsigned char>(tok));
    } else {
        std::printf("<%d>", tok);
    }
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s KERNEL.xclbin mmf_weights.bin [PROMPT] [TOKENS] [DEVICE]\n", argv[0]);
        return 2;
    }
    const std::string prompt = argc > 3 ? argv[3] : "ROMEO.";
    const int n_tokens = argc > 4 ? std::atoi(argv[4]) : 200;
    const unsigned device_index = argc > 5 ? static_cast<unsigned>(std::atoi(argv[5])) : 0;

    std::ifstream f(argv[2], std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (bytes.size() != static_cast<size_t>(MMF_BLOB_WORDS) * 4) {
        std::fprintf(stderr, "error: %s has %zu bytes, this kernel expects %d\n", argv[2], bytes.size(),
                     MMF_BLOB_WORDS * 4);
        return 1;
    }
    std::vector<int32_t> ids;
    for (unsigned char c : prompt) ids.push_back(static_cast<int32_t>(c % MMF_V));
    if (ids.empty()) ids.push_back(0);

    xrt::device device(device_index);
    const xrt::uuid uuid = device.load_xclbin(argv[1]);
    xrt::kernel kernel(device, uuid, "mmf_kernel");
    xrt::bo bo_params(device, bytes.size(), kernel.group_id(0));
    xrt::bo bo_in(device, ids.size() * sizeof(int32_t), kernel.group_id(1));
    xrt::bo bo_out(device, ids.size() * sizeof(int32_t), kernel.group_id(2));
    xrt::bo bo_logits(device, MMF_V * sizeof(int32_t), kernel.group_id(3));  // unused: logits not requested
    char *params = bo_params.map<char *>();
    std::copy(bytes.begin(), bytes.end(), params);
    bo_params.sync(XCL_BO_SYNC_BO_TO_DEVICE);
    int32_t *in = bo_in.map<int32_t *>();
    int32_t *out = bo_out.map<int32_t *>();
    std::copy(ids.begin(), ids.end(), in);
    bo_in.sync(XCL_BO_SYNC_BO_TO_DEVICE);

    // Call 1: load the blob on chip, reset the state, run the prompt; out[n-1] is the first new token.
    auto t0 = std::chrono::steady_clock::now();
    auto run = kernel(bo_params, bo_in, bo_out, bo_logits, static_cast<int32_t>(ids.size()), 0,
                      MMF_FLAG_LOAD | MMF_FLAG_RESET);
    run.wait();
    bo_out.sync(XCL_BO_SYNC_BO_FROM_DEVICE);
    int32_t tok = out[ids.size() - 1];
    if (tok < 0) {
        std::fprintf(stderr, "error: the kernel rejected the parameter blob (shape or format mismatch)\n");
        return 1;
    }
    std::printf("%s", prompt.c_str());
    print_token(tok);
    // Then one greedy token per call, fed on chip with the previous argmax.
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 1; i < n_tokens; ++i) {
        run = kernel(bo_params, bo_in, bo_out, bo_logits, 0, 1, 0);
        run.wait();
        bo_out.sync(XCL_BO_SYNC_BO_FROM_DEVICE, sizeof(int32_t), 0);
        tok = out[0];
        print_token(tok);
    }
    auto t2 = std::chrono::steady_clock::now();
    const double load_s = std::chrono::duration<double>(t1 - t0).count();
    const double gen_s = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "\nprompt + load: %.3f s; %d tokens in %.3f s (%.1f tokens/s incl. one call per token)\n",
                 load_s, n_tokens - 1, gen_s, gen_s > 0 ? (n_tokens - 1) / gen_s : 0.0);
    return 0;
}
