/*
 * A host-memory stand-in for the CUDA driver API (libcuda.so.1) and NVML, for testing the `cuda`
 * backend's logic without a GPU. Same symbols and C signatures as shared/reference/ffi.md D
 * (the `_v2` names included). It is not a GPU: it checks the calling discipline the backend
 * relies on, and reports violations with CUDA's error codes:
 *
 *   - every memory call needs a current context        -> CUDA_ERROR_INVALID_CONTEXT
 *   - sizes and map addresses are granule multiples     -> CUDA_ERROR_INVALID_VALUE
 *   - cuMemMap maps a whole allocation at offset 0      -> CUDA_ERROR_INVALID_VALUE
 *   - cuMemUnmap takes exactly a mapped range           -> CUDA_ERROR_INVALID_VALUE
 *   - a mapping is inaccessible until cuMemSetAccess grants the accessing GPU
 *                                                       -> CUDA_ERROR_ILLEGAL_ADDRESS
 *   - fd export needs an allocation made for it         -> CUDA_ERROR_INVALID_VALUE
 *
 * Two GPUs (EMOE_CUDA_SHIM_GPUS), 1 GiB each (address space only), 2 MiB granularity; the GPUs
 * can access each other as peers. Allocations are memfds, so exports are real fds.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3, CUDA_ERROR_INVALID_DEVICE = 101, CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400, CUDA_ERROR_ILLEGAL_ADDRESS = 700, CUDA_ERROR_NOT_SUPPORTED = 801,
};
typedef struct { int type, id; } CUmemLocation;
typedef struct {
    int type, requestedHandleTypes;
    CUmemLocation location;
    void *win32;
    unsigned char flags[8];
} CUmemAllocationProp;
typedef struct { CUmemLocation location; int flags; } CUmemAccessDesc;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
_Static_assert(sizeof(CUmemAllocationProp) == 32, "CUmemAllocationProp");
_Static_assert(sizeof(CUmemAccessDesc) == 12, "CUmemAccessDesc");

#define MAXG 8
#define GRAN ((size_t)2 << 20)
#define CAP ((size_t)1 << 30)
struct ctx { int magic, dev; };
struct alloc { int magic, dev, fd, fd_ok; size_t size; struct alloc *next; };
struct resv { CUdeviceptr base; size_t size; struct resv *next; };
struct mapping { CUdeviceptr va; size_t size; struct alloc *a; unsigned access; struct mapping *next; };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int inited, ngpu = 2;
static struct ctx ctxs[MAXG];
static size_t used[MAXG];
static struct alloc *allocs;
static struct resv *resvs;
static struct mapping *maps;
static __thread struct ctx *cur;

#define MAGIC 0x43554441
#define NEED_CTX() do { if (!inited) return CUDA_ERROR_NOT_INITIALIZED; if (!cur) return CUDA_ERROR_INVALID_CONTEXT; } while (0)
#define OKDEV(d) ((d) >= 0 && (d) < ngpu)

CUresult cuInit(unsigned flags) {
    if (flags) return CUDA_ERROR_INVALID_VALUE;
    const char *v = getenv("EMOE_CUDA_SHIM_GPUS");
    pthread_mutex_lock(&mu);
    if (!inited) {
        ngpu = v && *v ? atoi(v) : 2;
        if (ngpu < 0 || ngpu > MAXG) ngpu = 2;
        for (int i = 0; i < ngpu; i++) ctxs[i] = (struct ctx){MAGIC, i};
        inited = 1;
    }
    pthread_mutex_unlock(&mu);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int *n) { if (!inited) return CUDA_ERROR_NOT_INITIALIZED; *n = ngpu; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { if (!OKDEV(ordinal)) return CUDA_ERROR_INVALID_DEVICE; *d = ordinal; return 0; }
CUresult cuDeviceGetName(char *name, int len, int d) {
    if (!OKDEV(d) || len < 1) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "Shim GPU %d", d);
    return 0;
}
CUresult cuDeviceGetPCIBusId(char *bus, int len, int d) {
    if (!OKDEV(d) || len < 13) return CUDA_ERROR_INVALID_VALUE;
    snprintf(bus, (size_t)len, "0000:%02x:00.0", 0x10 + d);
    return 0;
}
CUresult cuDeviceGetAttribute(int *v, int attr, int d) {
    if (!OKDEV(d)) return CUDA_ERROR_INVALID_DEVICE;
    *v = attr == 102 || attr == 103;
    return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *b, int d) { if (!OKDEV(d)) return CUDA_ERROR_INVALID_DEVICE; *b = CAP; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { if (!OKDEV(d)) return CUDA_ERROR_INVALID_DEVICE; *c = &ctxs[d]; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { return OKDEV(d) ? 0 : CUDA_ERROR_INVALID_DEVICE; }
CUresult cuCtxSetCurrent(void *c) {
    struct ctx *x = c;
    if (x && x->magic != MAGIC) return CUDA_ERROR_INVALID_CONTEXT;
    cur = x;
    return 0;
}
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) {
    NEED_CTX();
    pthread_mutex_lock(&mu);
    *t = CAP;
    *f = CAP - used[cur->dev];
    pthread_mutex_unlock(&mu);
    return 0;
}
CUresult cuDeviceCanAccessPeer(int *can, int d, int p) {
    if (!OKDEV(d) || !OKDEV(p)) return CUDA_ERROR_INVALID_DEVICE;
    *can = d != p;
    return 0;
}

static int good_prop(const CUmemAllocationProp *p) {
    return p && p->type == 1 && p->location.type == 1 && OKDEV(p->location.id) &&
           (p->requestedHandleTypes == 0 || p->requestedHandleTypes == 1);
}
CUresult cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *p, int opt) {
    if (!good_prop(p) || (opt != 0 && opt != 1)) return CUDA_ERROR_INVALID_VALUE;
    *g = GRAN;
    return 0;
}
static struct alloc *find_alloc(unsigned long long h) {
    for (struct alloc *a = allocs; a; a = a->next)
        if ((unsigned long long)(uintptr_t)a == h && a->magic == MAGIC) return a;
    return NULL;
}
CUresult cuMemCreate(unsigned long long *h, size_t size, const CUmemAllocationProp *p, unsigned long long flags) {
    NEED_CTX();
    if (!good_prop(p) || flags || !size || size % GRAN) return CUDA_ERROR_INVALID_VALUE;
    int d = p->location.id;
    pthread_mutex_lock(&mu);
    CUresult rc = 0;
    if (used[d] + size > CAP) rc = CUDA_ERROR_OUT_OF_MEMORY;
    int fd = rc ? -1 : memfd_create("cuda-shim", MFD_CLOEXEC);
    if (!rc && (fd < 0 || ftruncate(fd, (off_t)size))) rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (!rc) {
        struct alloc *a = calloc(1, sizeof *a);
        *a = (struct alloc){MAGIC, d, fd, p->requestedHandleTypes == 1, size, allocs};
        allocs = a;
        used[d] += size;
        *h = (uintptr_t)a;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}
CUresult cuMemRelease(unsigned long long h) {
    NEED_CTX();
    pthread_mutex_lock(&mu);
    struct alloc *a = find_alloc(h);
    if (a) {
        /* CUDA keeps the memory alive while mapped; the memfd pages stay with the mmap. */
        for (struct alloc **pp = &allocs; *pp; pp = &(*pp)->next)
            if (*pp == a) { *pp = a->next; break; }
        used[a->dev] -= a->size;
        close(a->fd);
        a->magic = 0;
        for (struct mapping *m = maps; m; m = m->next)
            if (m->a == a) m->a = NULL;
        free(a);
    }
    pthread_mutex_unlock(&mu);
    return a ? 0 : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemAddressReserve(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr, unsigned long long flags) {
    NEED_CTX();
    if (!size || size % GRAN || addr || flags || (align && align % GRAN)) return CUDA_ERROR_INVALID_VALUE;
    char *raw = mmap(NULL, size + GRAN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t base = ((uintptr_t)raw + GRAN - 1) & ~(uintptr_t)(GRAN - 1);
    if (base > (uintptr_t)raw) munmap(raw, base - (uintptr_t)raw);
    size_t tail = (uintptr_t)raw + size + GRAN - (base + size);
    if (tail) munmap((void *)(base + size), tail);
    struct resv *r = calloc(1, sizeof *r);
    *r = (struct resv){base, size, NULL};
    pthread_mutex_lock(&mu);
    r->next = resvs;
    resvs = r;
    pthread_mutex_unlock(&mu);
    *p = base;
    return 0;
}
CUresult cuMemAddressFree(CUdeviceptr p, size_t size) {
    NEED_CTX();
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    for (struct resv **rp = &resvs; *rp; rp = &(*rp)->next)
        if ((*rp)->base == p && (*rp)->size == size) {
            struct resv *r = *rp;
            int busy = 0;
            for (struct mapping *m = maps; m; m = m->next) busy |= m->va >= p && m->va < p + size;
            if (!busy) { *rp = r->next; munmap((void *)r->base, r->size); free(r); rc = 0; }
            break;
        }
    pthread_mutex_unlock(&mu);
    return rc;
}
CUresult cuMemMap(CUdeviceptr va, size_t size, size_t off, unsigned long long h, unsigned long long flags) {
    NEED_CTX();
    CUresult rc = 0;
    pthread_mutex_lock(&mu);
    struct alloc *a = find_alloc(h);
    struct resv *r = NULL;
    for (struct resv *x = resvs; x; x = x->next)
        if (va >= x->base && va + size <= x->base + x->size) r = x;
    if (!a) rc = CUDA_ERROR_INVALID_HANDLE;
    else if (off || flags || size != a->size || va % GRAN || !r) rc = CUDA_ERROR_INVALID_VALUE;
    for (struct mapping *m = maps; !rc && m; m = m->next)
        if (va < m->va + m->size && m->va < va + size) rc = CUDA_ERROR_INVALID_VALUE;
    if (!rc && mmap((void *)va, size, PROT_NONE, MAP_SHARED | MAP_FIXED, a->fd, 0) == MAP_FAILED) rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (!rc) {
        struct mapping *m = calloc(1, sizeof *m);
        *m = (struct mapping){va, size, a, 0, maps};
        maps = m;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}
CUresult cuMemUnmap(CUdeviceptr va, size_t size) {
    NEED_CTX();
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    for (struct mapping **mp = &maps; *mp; mp = &(*mp)->next)
        if ((*mp)->va == va && (*mp)->size == size) {
            struct mapping *m = *mp;
            mmap((void *)va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
            *mp = m->next;
            free(m);
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&mu);
    return rc;
}
CUresult cuMemSetAccess(CUdeviceptr va, size_t size, const CUmemAccessDesc *d, size_t n) {
    NEED_CTX();
    if (!d || !n) return CUDA_ERROR_INVALID_VALUE;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i].location.type != 1 || !OKDEV(d[i].location.id) || d[i].flags != 3) return CUDA_ERROR_INVALID_VALUE;
        bits |= 1u << d[i].location.id;
    }
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    for (struct mapping *m = maps; m; m = m->next)
        if (m->va == va && m->size == size) {
            m->access = bits;
            mprotect((void *)va, size, PROT_READ | PROT_WRITE);
            rc = 0;
        }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Whether the current GPU may touch [p, p+n): one mapping that grants it access. */
static CUresult reach(CUdeviceptr p, size_t n) {
    CUresult rc = CUDA_ERROR_ILLEGAL_ADDRESS;
    pthread_mutex_lock(&mu);
    for (struct mapping *m = maps; m; m = m->next)
        if (p >= m->va && p + n <= m->va + m->size) {
            if (m->access & (1u << cur->dev)) rc = 0;
            break;
        }
    pthread_mutex_unlock(&mu);
    return rc;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    NEED_CTX();
    CUresult rc = reach(dst, n);
    if (!rc) memcpy((void *)dst, src, n);
    return rc;
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    NEED_CTX();
    CUresult rc = reach(src, n);
    if (!rc) memcpy(dst, (void *)src, n);
    return rc;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *stream) {
    NEED_CTX();
    if (!stream || *(int *)stream != MAGIC) return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = reach(src, n);
    if (!rc) rc = reach(dst, n);
    if (!rc) memmove((void *)dst, (void *)src, n);
    return rc;
}
CUresult cuMemcpyPeerAsync(CUdeviceptr dst, void *dctx, CUdeviceptr src, void *sctx, size_t n, void *stream) {
    NEED_CTX();
    struct ctx *keep = cur;
    CUresult rc = cuCtxSetCurrent(sctx);
    if (!rc) rc = reach(src, n);
    if (!rc) rc = cuCtxSetCurrent(dctx);
    if (!rc) rc = reach(dst, n);
    cur = keep;
    if (!stream) return CUDA_ERROR_INVALID_HANDLE;
    if (!rc) memmove((void *)dst, (void *)src, n);
    return rc;
}
CUresult cuStreamCreate(void **s, unsigned flags) {
    NEED_CTX();
    if (flags) return CUDA_ERROR_INVALID_VALUE;
    int *x = malloc(sizeof *x);
    *x = MAGIC;
    *s = x;
    return 0;
}
CUresult cuStreamDestroy_v2(void *s) { if (!s) return CUDA_ERROR_INVALID_HANDLE; *(int *)s = 0; free(s); return 0; }
CUresult cuStreamSynchronize(void *s) { return s && *(int *)s == MAGIC ? 0 : CUDA_ERROR_INVALID_HANDLE; }

CUresult cuMemExportToShareableHandle(void *out, unsigned long long h, int type, unsigned long long flags) {
    NEED_CTX();
    pthread_mutex_lock(&mu);
    struct alloc *a = find_alloc(h);
    CUresult rc = !a ? CUDA_ERROR_INVALID_HANDLE : (type != 1 || flags || !a->fd_ok) ? CUDA_ERROR_INVALID_VALUE : 0;
    if (!rc) *(int *)out = dup(a->fd);
    pthread_mutex_unlock(&mu);
    return rc;
}
CUresult cuMemImportFromShareableHandle(unsigned long long *h, void *os, int type) {
    NEED_CTX();
    int fd = (int)(intptr_t)os;
    off_t size = lseek(fd, 0, SEEK_END);
    if (type != 1 || size <= 0 || size % GRAN) return CUDA_ERROR_INVALID_VALUE;
    struct alloc *a = calloc(1, sizeof *a);
    *a = (struct alloc){MAGIC, cur->dev, dup(fd), 1, (size_t)size, NULL};
    pthread_mutex_lock(&mu);
    a->next = allocs;
    allocs = a;
    used[a->dev] += a->size; /* released by cuMemRelease like any allocation */
    pthread_mutex_unlock(&mu);
    *h = (uintptr_t)a;
    return 0;
}

static const char *name_of(CUresult e) {
    switch (e) {
    case 0: return "CUDA_SUCCESS";
    case 1: return "CUDA_ERROR_INVALID_VALUE";
    case 2: return "CUDA_ERROR_OUT_OF_MEMORY";
    case 3: return "CUDA_ERROR_NOT_INITIALIZED";
    case 101: return "CUDA_ERROR_INVALID_DEVICE";
    case 201: return "CUDA_ERROR_INVALID_CONTEXT";
    case 400: return "CUDA_ERROR_INVALID_HANDLE";
    case 700: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case 801: return "CUDA_ERROR_NOT_SUPPORTED";
    default: return NULL;
    }
}
CUresult cuGetErrorName(CUresult e, const char **s) { *s = name_of(e); return *s ? 0 : CUDA_ERROR_INVALID_VALUE; }
CUresult cuGetErrorString(CUresult e, const char **s) {
    *s = name_of(e) ? "error reported by the CUDA shim" : NULL;
    return *s ? 0 : CUDA_ERROR_INVALID_VALUE;
}

/* ---- NVML ---- */
static int nvml_dev[MAXG];
int nvmlInit_v2(void) { for (int i = 0; i < MAXG; i++) nvml_dev[i] = i; return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlDeviceGetHandleByPciBusId_v2(const char *bus, void **d) {
    unsigned dom, b, dev, fn;
    if (sscanf(bus, "%x:%x:%x.%x", &dom, &b, &dev, &fn) != 4 || b < 0x10 || b - 0x10 >= (unsigned)ngpu) return 6; /* NOT_FOUND */
    *d = &nvml_dev[b - 0x10];
    return 0;
}
int nvmlDeviceGetMemoryInfo(void *d, nvmlMemory_t *m) {
    int i = *(int *)d;
    pthread_mutex_lock(&mu);
    *m = (nvmlMemory_t){CAP, CAP - used[i], used[i]};
    pthread_mutex_unlock(&mu);
    return 0;
}
int nvmlDeviceGetUtilizationRates(void *d, nvmlUtilization_t *u) { (void)d; *u = (nvmlUtilization_t){33, 21}; return 0; }
int nvmlDeviceGetTemperature(void *d, int sensor, unsigned *t) { *t = 50 + (unsigned)*(int *)d; return sensor ? 2 : 0; }
int nvmlDeviceGetPowerUsage(void *d, unsigned *mw) { (void)d; *mw = 87000; return 0; }
const char *nvmlErrorString(int e) { return e ? "NVML shim error" : "Success"; }
