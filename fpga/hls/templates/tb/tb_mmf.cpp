// C-simulation testbench of mmf_kernel: golden data from the Python integer reference
// (matmulfree.fpga.intref), every token and every logit compared bit for bit.
//
// Usage: tb_mmf [weights.bin [max_steps]]
//   weights.bin: the parameter blob a host loads over AXI; it must equal weights/mmf_weights.h
//                and is then what the kernel reads (default: the header's initializer).
//   max_steps:   check only the first max_steps steps (shorter co-simulation runs).
// The kernel is called three times: LOAD|RESET with the prompt and the first generated tokens,
// a second call that continues generation from the state kept on chip, and a RESET call that
// must reproduce the first steps again. Last line: "MMF_CSIM result=PASS|FAIL ...".
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mmf_kernel.h"
#include "mmf_weights.h"
#include "tb_data.h"

namespace {

int report(const char *what, int step, int idx, long long got, long long want, int &shown) {
    if (shown < 10) std::printf("MISMATCH %s step %d index %d: kernel %lld, reference %lld\n", what, step, idx, got, want);
    ++shown;
    return 1;
}

bool load_bin(const char *path, std::vector<mmf_word_t> &blob) {
    FILE *fp = std::fopen(path, "rb");
    if (!fp) {
        std::printf("ERROR cannot open %s\n", path);
        return false;
    }
    std::vector<unsigned char> bytes;
    unsigned char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, fp)) > 0) bytes.insert(bytes.end(), buf, buf + n);
    std::fclose(fp);
    if (bytes.size() != static_cast<size_t>(MMF_BLOB_WORDS) * 4) {
        std::printf("ERROR %s has %zu bytes, expected %d\n", path, bytes.size(), MMF_BLOB_WORDS * 4);
        return false;
    }
    for (size_t w = 0; w < static_cast<size_t>(MMF_BLOB_WORDS); ++w) {  // little-endian words
        const mmf_word_t v = static_cast<mmf_word_t>(bytes[4 * w]) | static_cast<mmf_word_t>(bytes[4 * w + 1]) << 8 |
                             static_cast<mmf_word_t>(bytes[4 * w + 2]) << 16 |
                             static_cast<mmf_word_t>(bytes[4 * w + 3]) << 24;
        if (v != blob[w]) {
            std::printf("ERROR %s differs from mmf_weights.h at word %zu\n", path, w);
            return false;
        }
    }
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    std::vector<mmf_word_t> blob(mmf_weights, mmf_weights + MMF_BLOB_WORDS);
    if (argc > 1 && !load_bin(argv[1], blob)) {
        std::printf("MMF_CSIM result=FAIL steps=0 tokens_ok=0/0 logits_ok=0/0\n");
        return 1;
    }
    int steps = TB_STEPS;
    if (argc > 2) {
        const int m = std::atoi(argv[2]);
        if (m > 0 && m < steps) steps = m;
    }
    const int n_prompt = TB_N_PROMPT < steps ? TB_N_PROMPT : steps;
    const int n_rest = steps - n_prompt;
    const int n_gen1 = n_rest / 2, n_gen2 = n_rest - n_rest / 2;

    // Buffers hold 2 x MMF_TB_TOKENS entries past any pointer handed to the kernel, so that a
    // co-simulation wrapper copying the full m_axi depth never reads outside them.
    const size_t room = 2 * static_cast<size_t>(MMF_TB_TOKENS) + 8;
    std::vector<int32_t> tok_in(room, 0);
    std::copy(tb_prompt, tb_prompt + TB_N_PROMPT, tok_in.begin());
    std::vector<int32_t> tok_out(room, -2);
    std::vector<int32_t> logits(room * MMF_V, 0);

    // Call 1: load the blob, reset the state, run the prompt and the first generated tokens.
    mmf_kernel(blob.data(), tok_in.data(), tok_out.data(), logits.data(), n_prompt, n_gen1,
               MMF_FLAG_LOAD | MMF_FLAG_RESET | MMF_FLAG_LOGITS);
    // Call 2: continue from the on-chip state and last token.
    const size_t k2 = static_cast<size_t>(n_prompt + n_gen1);
    mmf_kernel(blob.data(), tok_in.data(), tok_out.data() + k2, logits.data() + k2 * MMF_V, 0, n_gen2,
               MMF_FLAG_LOGITS);

    int bad_tok = 0, bad_logit = 0, shown = 0;
    for (int s = 0; s < steps; ++s) {
        if (tok_out[s] != tb_tokens[s]) bad_tok += report("token", s, 0, tok_out[s], tb_tokens[s], shown);
        for (int j = 0; j < MMF_V; ++j) {
            const int32_t got = logits[static_cast<size_t>(s) * MMF_V + j];
            if (got != tb_logits[s][j]) bad_logit += report("logit", s, j, got, tb_logits[s][j], shown);
        }
    }
    // Call 3: RESET must restart from the zero state (first prompt steps again, state discarded).
    const int n_again = n_prompt < 4 ? n_prompt : 4;
    std::vector<int32_t> tok_again(room, -2);
    std::vector<int32_t> logits_again(room * MMF_V, 0);
    mmf_kernel(blob.data(), tok_in.data(), tok_again.data(), logits_again.data(), n_again, 0,
               MMF_FLAG_RESET | MMF_FLAG_LOGITS);
    int bad_reset = 0;
    for (int s = 0; s < n_again; ++s) {
        if (tok_again[s] != tb_tokens[s]) bad_reset += report("reset token", s, 0, tok_again[s], tb_tokens[s], shown);
        for (int j = 0; j < MMF_V; ++j) {
            const int32_t got = logits_again[static_cast<size_t>(s) * MMF_V + j];
            if (got != tb_logits[s][j]) bad_reset += report("reset logit", s, j, got, tb_logits[s][j], shown);
        }
    }

    const long long n_logits = static_cast<long long>(steps) * MMF_V;
    const bool pass = bad_tok == 0 && bad_logit == 0 && bad_reset == 0;
    std::printf("checked %d steps (%d prompt + %d generated in two calls) + %d after RESET; first tokens:", steps,
                n_prompt, n_rest, n_again);
    for (int s = 0; s < steps && s < 16; ++s) std::printf(" %d", tok_out[s]);
    std::printf("\nMMF_CSIM result=%s steps=%d tokens_ok=%d/%d logits_ok=%lld/%lld reset_mismatches=%d\n",
                pass ? "PASS" : "FAIL", steps, steps - bad_tok, steps, n_logits - bad_logit, n_logits, bad_reset);
    return pass ? 0 : 1;
}
