// MatMul-free LM token-step accelerator: top-level interface (Vitis HLS kernel "mmf_kernel"), the
// same for every architecture (MLGRU, RWKV-4).
//
// One call runs `n_prompt` teacher-forced steps (tokens from tok_in) and then `n_gen` greedy
// steps, each fed with the previous step's on-chip argmax. Step s writes its argmax token to
// tok_out[s] and, with MMF_FLAG_LOGITS, its V logits (Q(MMF_LOGIT_FRAC)) to logits[s*V ...].
// The recurrent state (MLGRU: h, L x D; RWKV: shifted inputs and WKV sums) and the last token stay on
// chip between calls.
#ifndef MMF_KERNEL_H
#define MMF_KERNEL_H

#include <cstdint>

#include "mmf_params.h"

typedef uint32_t mmf_word_t;  // 16 ternary weights (the 2-bit code of matmulfree.quant) per word

enum {
    MMF_FLAG_LOAD = 1,    // copy the parameter blob (gains, constants, embedding[, weights]) on chip
    MMF_FLAG_RESET = 2,   // zero the recurrent state and the last token before running
    MMF_FLAG_LOGITS = 4,  // write the logits of every step
};

// tok_out[s] = -1 marks a step that did not run (blob not loaded / rejected, or token out of range).
extern "C" void mmf_kernel(const mmf_word_t *params, const int32_t *tok_in, int32_t *tok_out, int32_t *logits,
                           int32_t n_prompt, int32_t n_gen, int32_t flags);

#endif  // MMF_KERNEL_H
