// Tiny logits dumper against libllama's public API (llama.h of the llama.cpp tree vendored in
// llama-cpp-python 0.3.36, ggml-org/llama.cpp@0c1e57098). Built by tools/build_llama_cpp.sh; this file
// is qinfer's, llama.cpp itself is never committed.
//
//   llama-logits logits MODEL.gguf OUT.npy ID,ID,...   all-position logits of one batch -> float32 .npy [T, n_vocab]
//   llama-logits greedy MODEL.gguf N ID,ID,...         N greedy (argmax) ids after the prompt, printed as JSON
//
// Context: n_ctx 512, n_batch = n_ubatch = 512 (one ubatch for prompts up to 512 ids), one sequence,
// CPU only. Threads: $LLAMA_THREADS (default 1). Set LLAMA_VERBOSE=1 to see llama.cpp's log.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static bool g_verbose = false;

static void log_cb(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static std::vector<llama_token> parse_ids(const char * s) {
    std::vector<llama_token> ids;
    std::string cur;
    for (const char * p = s;; ++p) {
        if (*p == ',' || *p == ' ' || *p == '[' || *p == ']' || *p == '\0') {
            if (!cur.empty()) { ids.push_back((llama_token) std::atoi(cur.c_str())); cur.clear(); }
            if (*p == '\0') break;
        } else {
            cur.push_back(*p);
        }
    }
    return ids;
}

static bool write_npy(const char * path, const std::vector<float> & data, size_t rows, size_t cols) {
    std::string hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "), }";
    const size_t pre = 10;  // magic(6) + version(2) + header len(2)
    size_t total = pre + hdr.size() + 1;
    size_t pad = (64 - total % 64) % 64;
    hdr.append(pad, ' ');
    hdr.push_back('\n');
    FILE * f = fopen(path, "wb");
    if (!f) return false;
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    fwrite(magic, 1, 8, f);
    uint16_t hlen = (uint16_t) hdr.size();
    unsigned char hl[2] = {(unsigned char) (hlen & 0xff), (unsigned char) (hlen >> 8)};
    fwrite(hl, 1, 2, f);
    fwrite(hdr.data(), 1, hdr.size(), f);
    fwrite(data.data(), sizeof(float), data.size(), f);
    return fclose(f) == 0;
}

// decode `ids` starting at position `pos0`; logits requested for all positions or only the last
static int decode(llama_context * ctx, const std::vector<llama_token> & ids, int pos0, bool all_logits) {
    llama_batch batch = llama_batch_init((int32_t) ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); ++i) {
        batch.token[i]     = ids[i];
        batch.pos[i]       = pos0 + (llama_pos) i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = all_logits || i + 1 == ids.size();
    }
    batch.n_tokens = (int32_t) ids.size();
    int rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    return rc;
}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s logits MODEL.gguf OUT.npy ID,ID,...\n       %s greedy MODEL.gguf N ID,ID,...\n",
                argv[0], argv[0]);
        return 2;
    }
    const std::string mode = argv[1];
    const char * env_v = getenv("LLAMA_VERBOSE");
    g_verbose = env_v && *env_v && strcmp(env_v, "0") != 0;
    const char * env_t = getenv("LLAMA_THREADS");
    const int n_threads = env_t ? std::atoi(env_t) : 1;
    std::vector<llama_token> prompt = parse_ids(argv[4]);
    if (prompt.empty() || prompt.size() > 512) {
        fprintf(stderr, "need 1..512 prompt ids\n");
        return 2;
    }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[2], mp);
    if (!model) { fprintf(stderr, "failed to load %s\n", argv[2]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = 512;
    cp.n_batch         = 512;
    cp.n_ubatch        = 512;
    cp.n_seq_max       = 1;
    cp.n_threads       = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf         = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "failed to create context\n"); return 1; }

    int ret = 0;
    if (mode == "logits") {
        if (decode(ctx, prompt, 0, true) != 0) { fprintf(stderr, "llama_decode failed\n"); return 1; }
        std::vector<float> out((size_t) prompt.size() * n_vocab);
        for (size_t i = 0; i < prompt.size(); ++i) {
            const float * l = llama_get_logits_ith(ctx, (int32_t) i);
            if (!l) { fprintf(stderr, "no logits for position %zu\n", i); return 1; }
            memcpy(out.data() + i * n_vocab, l, sizeof(float) * n_vocab);
        }
        if (!write_npy(argv[3], out, prompt.size(), n_vocab)) { fprintf(stderr, "cannot write %s\n", argv[3]); return 1; }
        fprintf(stderr, "wrote %s [%zu, %d]\n", argv[3], prompt.size(), n_vocab);
    } else if (mode == "greedy") {
        const int n_gen = std::atoi(argv[3]);
        std::vector<llama_token> gen;
        int pos = 0;
        std::vector<llama_token> next = prompt;
        for (int step = 0; step < n_gen; ++step) {
            if (decode(ctx, next, pos, false) != 0) { fprintf(stderr, "llama_decode failed\n"); return 1; }
            pos += (int) next.size();
            const float * l = llama_get_logits_ith(ctx, -1);
            int best = 0;
            for (int v = 1; v < n_vocab; ++v) if (l[v] > l[best]) best = v;  // first max, like argmax
            gen.push_back(best);
            next.assign(1, best);  // EOS is ignored: always generate n_gen ids
        }
        printf("[");
        for (size_t i = 0; i < gen.size(); ++i) printf("%s%d", i ? ", " : "", gen[i]);
        printf("]\n");
    } else {
        fprintf(stderr, "unknown mode %s\n", mode.c_str());
        ret = 2;
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return ret;
}
