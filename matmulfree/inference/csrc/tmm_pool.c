/* A small persistent thread pool with a spinning barrier (pthreads, C11 atomics).

   The caller of mmf_pool_run is thread 0 and works too. Workers wait for the next task by spinning
   for a short while and then sleeping on a condition variable, so an idle engine leaves the cores to
   others; inside a task, mmf_barrier spins (with pause / sched_yield), since phases of a decode step
   are a few microseconds apart. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "tmm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_BEFORE_YIELD 2000
#define SPIN_BEFORE_SLEEP 200000

struct mmf_pool {
    int n;
    pthread_t *threads;
    _Alignas(64) atomic_int task_gen;  /* bumped by mmf_pool_run for each task */
    _Alignas(64) atomic_int done;      /* workers finished with the current task */
    _Alignas(64) atomic_int bar_count; /* barrier arrivals */
    _Alignas(64) atomic_int bar_gen;   /* barrier generation */
    _Alignas(64) mmf_task_fn fn;
    void *ctx;
    int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
};

typedef struct {
    mmf_pool *pool;
    int tid;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = (worker_arg *)p;
    mmf_pool *pool = a->pool;
    int tid = a->tid;
    free(a);
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool->task_gen, memory_order_acquire) == seen) {
            if (++spins < SPIN_BEFORE_YIELD) {
                CPU_RELAX();
            } else if (spins < SPIN_BEFORE_SLEEP) {
                sched_yield();
            } else {
                pthread_mutex_lock(&pool->mu);
                pool->sleepers++;
                while (atomic_load_explicit(&pool->task_gen, memory_order_acquire) == seen)
                    pthread_cond_wait(&pool->cv, &pool->mu);
                pool->sleepers--;
                pthread_mutex_unlock(&pool->mu);
            }
        }
        seen = atomic_load_explicit(&pool->task_gen, memory_order_acquire);
        if (pool->stop) return 0;
        pool->fn(pool->ctx, tid, pool->n);
        atomic_fetch_add_explicit(&pool->done, 1, memory_order_acq_rel);
    }
}

mmf_pool *mmf_pool_new(int nthreads) {
    if (nthreads < 1) nthreads = 1;
    mmf_pool *pool = (mmf_pool *)calloc(1, sizeof(mmf_pool));
    if (!pool) return 0;
    pool->n = nthreads;
    pthread_mutex_init(&pool->mu, 0);
    pthread_cond_init(&pool->cv, 0);
    pool->threads = (pthread_t *)calloc((size_t)nthreads, sizeof(pthread_t));
    for (int t = 1; t < nthreads; t++) {
        worker_arg *a = (worker_arg *)malloc(sizeof(worker_arg));
        a->pool = pool;
        a->tid = t;
        if (pthread_create(&pool->threads[t], 0, worker, a) != 0) {
            free(a);
            pool->n = t; /* run with the threads that started */
            break;
        }
    }
    return pool;
}

int mmf_pool_threads(const mmf_pool *pool) { return pool->n; }

static void wake(mmf_pool *pool) {
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add_explicit(&pool->task_gen, 1, memory_order_acq_rel);
    if (pool->sleepers) pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
}

void mmf_pool_run(mmf_pool *pool, mmf_task_fn fn, void *ctx) {
    if (pool->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    wake(pool);
    fn(ctx, 0, pool->n);
    int spins = 0;
    while (atomic_load_explicit(&pool->done, memory_order_acquire) < pool->n - 1) {
        if (++spins < SPIN_BEFORE_YIELD) CPU_RELAX();
        else sched_yield();
    }
}

void mmf_barrier(mmf_pool *pool) {
    if (pool->n == 1) return;
    int gen = atomic_load_explicit(&pool->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->bar_count, 1, memory_order_acq_rel) == pool->n - 1) {
        atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->bar_gen, 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&pool->bar_gen, memory_order_acquire) == gen) {
        if (++spins < SPIN_BEFORE_YIELD) CPU_RELAX();
        else sched_yield();
    }
}

void mmf_pool_free(mmf_pool *pool) {
    if (!pool) return;
    pool->stop = 1;
    wake(pool);
    for (int t = 1; t < pool->n; t++) pthread_join(pool->threads[t], 0);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    free(pool->threads);
    free(pool);
}
