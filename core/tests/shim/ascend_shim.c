/*
 * A host-memory stand-in for AscendCL (libascendcl.so) and DCMI (libdcmi.so), for testing the
 * `ascend` backend without an NPU. It exports the same symbols with the same C signatures
 * (shared/reference/ffi.md A, B) and enforces the documented VMM rules with the real error codes:
 *
 *   - sizes of physical allocations and reservations are multiples of the granularity, and map
 *     addresses are granule-aligned                      -> ACL_ERROR_RT_PARAM_INVALID / _ADDR_UNALIGNED
 *   - aclrtMapMem maps a whole handle at offset 0         -> ACL_ERROR_RT_PARAM_INVALID
 *   - aclrtUnmapMem takes a mapping's start address only  -> ACL_ERROR_RT_PARAM_INVALID
 *   - import needs the importer's PID on the whitelist    -> ACL_ERROR_RT_NO_PERMISSION
 *   - one reservation never mixes devices, nor local and imported memory
 *                                                         -> ACL_ERROR_RT_PARAM_INVALID
 *   - on-chip async device-to-device copies need 64-byte aligned ends
 *                                                         -> ACL_ERROR_RT_ADDR_UNALIGNED
 *   - copies between devices need peer access enabled   -> ACL_ERROR_RT_FEATURE_NOT_SUPPORT
 *
 * Which code the real driver returns for each rule violation is not documented; the shim picks
 * the closest code from the reference and always leaves a message for aclGetRecentErrMsg.
 *
 * Physical memory is a memfd, so every mapping of one handle (and every import) shares pages:
 * zero-copy views behave as on the device. Reservations are PROT_NONE mmaps. Devices, capacity
 * and granularity come from EMOE_SHIM_DEVICES (2), EMOE_SHIM_HBM_MB (4096; address space only,
 * pages are touched on use) and EMOE_SHIM_GRANULARITY_KB (2048), read at aclInit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtDrvMemHandle;

enum {
    OK = 0,
    ACL_ERROR_UNINITIALIZE = 100001,
    ACL_ERROR_REPEAT_INITIALIZE = 100002,
    ACL_ERROR_REPEAT_FINALIZE = 100037,
    ACL_ERROR_RT_PARAM_INVALID = 107000,
    ACL_ERROR_RT_INVALID_DEVICEID = 107001,
    ACL_ERROR_RT_CONTEXT_NULL = 107002,
    ACL_ERROR_RT_ADDR_UNALIGNED = 107008,
    ACL_ERROR_RT_INVALID_HANDLE = 107017,
    ACL_ERROR_RT_FEATURE_NOT_SUPPORT = 207000,
    ACL_ERROR_RT_MEMORY_ALLOCATION = 207001,
    ACL_ERROR_RT_NO_PERMISSION = 207006,
    ACL_ERROR_RT_INTERNAL_ERROR = 507000,
};

typedef struct { uint32_t id; int type; } aclrtMemLocation;
typedef struct {
    int handleType, allocationType, memAttr;
    aclrtMemLocation location;
    uint64_t reserve;
} aclrtPhysicalMemProp;
typedef struct { int flags; aclrtMemLocation location; uint8_t rsv[12]; } aclrtMemAccessDesc;
typedef struct { int32_t cube, vector, aicpu, memory; void *ext; } aclrtUtilizationInfo;
struct dcmi_hbm_info {
    unsigned long long memory_size;
    unsigned int freq;
    unsigned long long memory_usage;
    int temp;
    unsigned int bandwith_util_rate;
};

/* Layout checks against ffi.md (the Rust side asserts the same numbers). */
_Static_assert(sizeof(aclrtPhysicalMemProp) == 32, "aclrtPhysicalMemProp");
_Static_assert(sizeof(aclrtMemAccessDesc) == 24, "aclrtMemAccessDesc");
_Static_assert(sizeof(aclrtUtilizationInfo) == 24, "aclrtUtilizationInfo");
_Static_assert(sizeof(struct dcmi_hbm_info) == 32, "dcmi_hbm_info");

#define MAX_DEV 16
#define MAX_PIDS 16
#define SHIM_MAGIC 0x41434c53u

struct phys {
    unsigned magic;
    int device;
    size_t size;
    int fd;
    int imported;
    struct phys *next;
};
struct resv {
    uintptr_t base;
    size_t size;
    struct resv *next;
};
struct mapping {
    uintptr_t va;
    size_t size;
    struct phys *p;
    struct resv *r;
    struct mapping *next;
};
struct share {
    uint64_t token;
    int fd, device, validate, npids;
    size_t size;
    int32_t pids[MAX_PIDS];
    struct phys *origin;
    struct share *next;
};
struct stream {
    unsigned magic;
    int device;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int inited, ndev = 2;
static size_t capacity = (size_t)4096 << 20, gran = (size_t)2 << 20;
static size_t used[MAX_DEV];
static int peer[MAX_DEV][MAX_DEV];
static struct phys *physs;
static struct resv *resvs;
static struct mapping *maps;
static struct share *shares;
static uint64_t next_token = 0x5a1e000000000001ull;
static __thread int cur_dev = -1;
static __thread char msg[512], out_msg[512];

static aclError fail(aclError code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *aclGetRecentErrMsg(void) {
    if (!msg[0]) return NULL;
    memcpy(out_msg, msg, sizeof msg);
    msg[0] = 0;
    return out_msg;
}

static size_t env_num(const char *name, size_t dflt) {
    const char *v = getenv(name);
    return v && *v ? (size_t)strtoull(v, NULL, 10) : dflt;
}

aclError aclInit(const char *config) {
    (void)config;
    pthread_mutex_lock(&mu);
    int again = inited;
    if (!again) {
        ndev = (int)env_num("EMOE_SHIM_DEVICES", 2);
        if (ndev < 1 || ndev > MAX_DEV) ndev = 2;
        capacity = env_num("EMOE_SHIM_HBM_MB", 4096) << 20;
        gran = env_num("EMOE_SHIM_GRANULARITY_KB", 2048) << 10;
        inited = 1;
    }
    pthread_mutex_unlock(&mu);
    return again ? fail(ACL_ERROR_REPEAT_INITIALIZE, "aclInit: already initialised") : OK;
}

aclError aclFinalize(void) {
    pthread_mutex_lock(&mu);
    int was = inited;
    inited = 0;
    pthread_mutex_unlock(&mu);
    return was ? OK : fail(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize: not initialised");
}

#define NEED_INIT()                                                                      \
    do {                                                                                 \
        if (!inited) return fail(ACL_ERROR_UNINITIALIZE, "%s: call aclInit first", __func__); \
    } while (0)
#define VALID_DEV(d) ((d) >= 0 && (d) < ndev)
#define NEED_DEV()                                                                        \
    do {                                                                                  \
        if (cur_dev < 0) return fail(ACL_ERROR_RT_CONTEXT_NULL, "%s: no device set on this thread (aclrtSetDevice)", __func__); \
    } while (0)

aclError aclrtSetDevice(int32_t d) {
    NEED_INIT();
    if (!VALID_DEV(d)) return fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtSetDevice: device %d does not exist (%d devices)", d, ndev);
    cur_dev = d;
    return OK;
}
aclError aclrtResetDevice(int32_t d) {
    if (!VALID_DEV(d)) return fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtResetDevice: device %d", d);
    if (cur_dev == d) cur_dev = -1;
    return OK;
}
aclError aclrtGetDevice(int32_t *d) {
    NEED_INIT();
    if (!d) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtGetDevice: NULL");
    NEED_DEV();
    *d = cur_dev;
    return OK;
}
aclError aclrtGetDeviceCount(uint32_t *n) {
    NEED_INIT();
    if (!n) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtGetDeviceCount: NULL");
    *n = (uint32_t)ndev;
    return OK;
}
const char *aclrtGetSocName(void) { return "Ascend910B-shim"; }

aclError aclrtGetMemInfo(int attr, size_t *free_, size_t *total) {
    NEED_INIT();
    NEED_DEV();
    if (!free_ || !total || attr < 0 || attr > 17) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtGetMemInfo: bad arguments");
    pthread_mutex_lock(&mu);
    *total = capacity;
    *free_ = capacity - used[cur_dev];
    pthread_mutex_unlock(&mu);
    return OK;
}

aclError aclrtGetDeviceUtilizationRate(int32_t d, aclrtUtilizationInfo *u) {
    if (!VALID_DEV(d) || !u) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtGetDeviceUtilizationRate: bad arguments");
    u->cube = 7; u->vector = 3; u->aicpu = 1; u->memory = 11;
    return OK;
}

/* ---- streams and peers ---- */

aclError aclrtCreateStream(aclrtStream *s) {
    NEED_INIT();
    NEED_DEV();
    if (!s) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtCreateStream: NULL");
    struct stream *st = malloc(sizeof *st);
    if (!st) return fail(ACL_ERROR_RT_INTERNAL_ERROR, "aclrtCreateStream: out of host memory");
    st->magic = SHIM_MAGIC;
    st->device = cur_dev;
    *s = st;
    return OK;
}
static int valid_stream(aclrtStream s) { return s && ((struct stream *)s)->magic == SHIM_MAGIC; }
aclError aclrtDestroyStream(aclrtStream s) {
    if (!valid_stream(s)) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtDestroyStream: not a stream");
    ((struct stream *)s)->magic = 0;
    free(s);
    return OK;
}
aclError aclrtSynchronizeStream(aclrtStream s) {
    return valid_stream(s) ? OK : fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtSynchronizeStream: not a stream");
}

aclError aclrtDeviceCanAccessPeer(int32_t *can, int32_t d, int32_t p) {
    if (!can || !VALID_DEV(d) || !VALID_DEV(p)) return fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtDeviceCanAccessPeer: device %d or %d", d, p);
    *can = d != p;
    return OK;
}
aclError aclrtDeviceEnablePeerAccess(int32_t p, uint32_t flags) {
    NEED_INIT();
    NEED_DEV();
    if (flags) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtDeviceEnablePeerAccess: flags must be 0");
    if (!VALID_DEV(p) || p == cur_dev) return fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtDeviceEnablePeerAccess: peer %d from device %d", p, cur_dev);
    pthread_mutex_lock(&mu);
    peer[cur_dev][p] = 1;
    pthread_mutex_unlock(&mu);
    return OK;
}

/* ---- physical memory ---- */

static struct phys *find_phys(void *h) {
    for (struct phys *p = physs; p; p = p->next)
        if (p == h && p->magic == SHIM_MAGIC) return p;
    return NULL;
}
static int check_prop(const aclrtPhysicalMemProp *prop) {
    return prop && prop->location.type == 1 && VALID_DEV((int)prop->location.id) && prop->handleType == 0 &&
           prop->allocationType == 0;
}

aclError aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop, int option, size_t *g) {
    NEED_INIT();
    if (!check_prop(prop) || !g || (option != 0 && option != 1))
        return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemGetAllocationGranularity: bad prop or option");
    *g = gran;
    return OK;
}

aclError aclrtMallocPhysical(aclrtDrvMemHandle *h, size_t size, const aclrtPhysicalMemProp *prop, uint64_t flags) {
    NEED_INIT();
    if (!h || !check_prop(prop) || flags) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMallocPhysical: bad handle pointer, prop or flags");
    if (size == 0 || size % gran)
        return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMallocPhysical: size %zu is not a multiple of the granularity %zu", size, gran);
    int d = (int)prop->location.id;
    pthread_mutex_lock(&mu);
    if (used[d] + size > capacity) {
        pthread_mutex_unlock(&mu);
        return fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocPhysical: device %d out of memory (%zu of %zu used, %zu asked)", d, used[d], capacity, size);
    }
    int fd = memfd_create("acl-shim-phys", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0) close(fd);
        pthread_mutex_unlock(&mu);
        return fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocPhysical: memfd: %s", strerror(errno));
    }
    struct phys *p = calloc(1, sizeof *p);
    p->magic = SHIM_MAGIC;
    p->device = d;
    p->size = size;
    p->fd = fd;
    p->next = physs;
    physs = p;
    used[d] += size;
    pthread_mutex_unlock(&mu);
    *h = p;
    return OK;
}

aclError aclrtFreePhysical(aclrtDrvMemHandle h) {
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct phys *p = find_phys(h);
    aclError rc = OK;
    if (!p) {
        rc = fail(ACL_ERROR_RT_INVALID_HANDLE, "aclrtFreePhysical: %p is not a physical memory handle", h);
    } else {
        for (struct mapping *m = maps; m; m = m->next)
            if (m->p == p) {
                rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtFreePhysical: handle %p is still mapped at %#lx; unmap it first", h, (unsigned long)m->va);
                break;
            }
    }
    if (rc == OK) {
        for (struct phys **pp = &physs; *pp; pp = &(*pp)->next)
            if (*pp == p) { *pp = p->next; break; }
        if (!p->imported) used[p->device] -= p->size;
        close(p->fd);
        p->magic = 0;
        free(p);
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- reservations and mappings ---- */

static struct resv *resv_of(uintptr_t va, size_t len) {
    for (struct resv *r = resvs; r; r = r->next)
        if (va >= r->base && va - r->base < r->size && len <= r->size - (va - r->base)) return r;
    return NULL;
}

aclError aclrtReserveMemAddress(void **va, size_t size, size_t alignment, void *expect, uint64_t flags) {
    NEED_INIT();
    if (!va || alignment || expect || flags > 1)
        return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtReserveMemAddress: alignment must be 0, expectPtr NULL, flags 0 or 1");
    if (size == 0 || size % gran)
        return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtReserveMemAddress: size %zu is not a multiple of the granularity %zu", size, gran);
    /* Over-reserve and trim so the base is granule-aligned. */
    char *raw = mmap(NULL, size + gran, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtReserveMemAddress: %s", strerror(errno));
    uintptr_t base = ((uintptr_t)raw + gran - 1) & ~(uintptr_t)(gran - 1);
    if (base > (uintptr_t)raw) munmap(raw, base - (uintptr_t)raw);
    size_t tail = (uintptr_t)raw + size + gran - (base + size);
    if (tail) munmap((void *)(base + size), tail);
    struct resv *r = calloc(1, sizeof *r);
    r->base = base;
    r->size = size;
    pthread_mutex_lock(&mu);
    r->next = resvs;
    resvs = r;
    pthread_mutex_unlock(&mu);
    *va = (void *)base;
    return OK;
}

aclError aclrtReleaseMemAddress(void *va) {
    NEED_INIT();
    aclError rc = OK;
    pthread_mutex_lock(&mu);
    struct resv **rp = &resvs;
    while (*rp && (*rp)->base != (uintptr_t)va) rp = &(*rp)->next;
    if (!*rp) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtReleaseMemAddress: %p is not the start of a reserved range", va);
    } else {
        for (struct mapping *m = maps; m; m = m->next)
            if (m->r == *rp) {
                rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtReleaseMemAddress: %p still has a mapping at %#lx", va, (unsigned long)m->va);
                break;
            }
    }
    if (rc == OK) {
        struct resv *r = *rp;
        *rp = r->next;
        munmap((void *)r->base, r->size);
        free(r);
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

aclError aclrtMapMem(void *va, size_t size, size_t offset, aclrtDrvMemHandle h, uint64_t flags) {
    NEED_INIT();
    uintptr_t a = (uintptr_t)va;
    aclError rc = OK;
    pthread_mutex_lock(&mu);
    struct phys *p = find_phys(h);
    struct resv *r = resv_of(a, size);
    if (!p) {
        rc = fail(ACL_ERROR_RT_INVALID_HANDLE, "aclrtMapMem: %p is not a physical memory handle", h);
    } else if (flags) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: flags must be 0");
    } else if (offset != 0) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: offset must be 0 (whole handles only), got %zu", offset);
    } else if (size != p->size) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: size %zu must equal the whole allocation size %zu", size, p->size);
    } else if (a % gran) {
        rc = fail(ACL_ERROR_RT_ADDR_UNALIGNED, "aclrtMapMem: address %p is not aligned to the granularity %zu", va, gran);
    } else if (!r) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: [%p, +%zu) is not inside one reserved range", va, size);
    } else {
        for (struct mapping *m = maps; m && rc == OK; m = m->next) {
            if (m->r != r) continue;
            if (a < m->va + m->size && m->va < a + size)
                rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: [%p, +%zu) overlaps the mapping at %#lx", va, size, (unsigned long)m->va);
            else if (m->p->device != p->device)
                rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: the reserved range already holds memory of device %d; it cannot mix in device %d", m->p->device, p->device);
            else if (m->p->imported != p->imported)
                rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMapMem: one reserved range cannot mix aclrtMallocPhysical and imported memory");
        }
    }
    if (rc == OK) {
        void *got = mmap(va, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, p->fd, 0);
        if (got == MAP_FAILED) {
            rc = fail(ACL_ERROR_RT_INTERNAL_ERROR, "aclrtMapMem: mmap: %s", strerror(errno));
        } else {
            struct mapping *m = calloc(1, sizeof *m);
            m->va = a;
            m->size = size;
            m->p = p;
            m->r = r;
            m->next = maps;
            maps = m;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

aclError aclrtUnmapMem(void *va) {
    NEED_INIT();
    uintptr_t a = (uintptr_t)va;
    aclError rc = OK;
    pthread_mutex_lock(&mu);
    struct mapping **mp = &maps;
    while (*mp && (*mp)->va != a) mp = &(*mp)->next;
    if (!*mp) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtUnmapMem: %p is not mapped", va);
        for (struct mapping *m = maps; m; m = m->next)
            if (a > m->va && a < m->va + m->size) {
                rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtUnmapMem: %p is not the start of a mapping (the mapping starts at %#lx); unmap by start address", va, (unsigned long)m->va);
                break;
            }
    } else {
        struct mapping *m = *mp;
        mmap((void *)m->va, m->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        *mp = m->next;
        free(m);
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Whether [a, a+len) is covered by mappings (of one device); that device in *dev. */
static int covered(uintptr_t a, size_t len, int *dev) {
    *dev = -1;
    while (len) {
        struct mapping *hit = NULL;
        for (struct mapping *m = maps; m; m = m->next)
            if (a >= m->va && a < m->va + m->size) { hit = m; break; }
        if (!hit || (*dev >= 0 && *dev != hit->p->device)) return 0;
        *dev = hit->p->device;
        size_t n = hit->va + hit->size - a;
        if (n >= len) return 1;
        a += n;
        len -= n;
    }
    return 1;
}

aclError aclrtMemSetAccess(void *va, size_t size, aclrtMemAccessDesc *desc, size_t count) {
    NEED_INIT();
    int dev;
    if (!desc || count < 1) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemSetAccess: need at least one descriptor");
    for (size_t i = 0; i < count; i++)
        if (desc[i].location.type != 1 || !VALID_DEV((int)desc[i].location.id) ||
            (desc[i].flags != 0 && desc[i].flags != 1 && desc[i].flags != 3))
            return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemSetAccess: descriptor %zu is invalid", i);
    pthread_mutex_lock(&mu);
    int ok = covered((uintptr_t)va, size, &dev);
    pthread_mutex_unlock(&mu);
    if (!ok) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemSetAccess: [%p, +%zu) is not mapped", va, size);
    int prot = desc[0].flags == 3 ? PROT_READ | PROT_WRITE : desc[0].flags == 1 ? PROT_READ : PROT_NONE;
    mprotect(va, size, prot);
    return OK;
}

/* ---- copies ---- */

enum { H2H = 0, H2D = 1, D2H = 2, D2D = 3 };

static aclError do_copy(const char *api, void *dst, size_t dmax, const void *src, size_t n, int kind, int async) {
    NEED_INIT();
    if (!dst || !src || n > dmax) return fail(ACL_ERROR_RT_PARAM_INVALID, "%s: NULL pointer or count %zu > destMax %zu", api, n, dmax);
    if (kind < 0 || kind > 3) return fail(ACL_ERROR_RT_PARAM_INVALID, "%s: unsupported kind %d", api, kind);
    int sd = -1, dd = -1;
    pthread_mutex_lock(&mu);
    int src_ok = !(kind == D2H || kind == D2D) || covered((uintptr_t)src, n, &sd);
    int dst_ok = !(kind == H2D || kind == D2D) || covered((uintptr_t)dst, n, &dd);
    int peer_ok = kind != D2D || sd == dd || peer[sd][dd] || peer[dd][sd];
    pthread_mutex_unlock(&mu);
    if (!src_ok) return fail(ACL_ERROR_RT_PARAM_INVALID, "%s: source [%p, +%zu) is not mapped device memory", api, src, n);
    if (!dst_ok) return fail(ACL_ERROR_RT_PARAM_INVALID, "%s: destination [%p, +%zu) is not mapped device memory", api, dst, n);
    if (!peer_ok) return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "%s: peer access between device %d and %d is not enabled", api, sd, dd);
    if (async && kind == D2D && (((uintptr_t)src | (uintptr_t)dst) % 64))
        return fail(ACL_ERROR_RT_ADDR_UNALIGNED, "%s: device-to-device copies need 64-byte aligned addresses (%p <- %p)", api, dst, src);
    memmove(dst, src, n);
    return OK;
}

aclError aclrtMemcpy(void *dst, size_t dmax, const void *src, size_t n, int kind) {
    return do_copy("aclrtMemcpy", dst, dmax, src, n, kind, 0);
}
aclError aclrtMemcpyAsync(void *dst, size_t dmax, const void *src, size_t n, int kind, aclrtStream s) {
    if (!valid_stream(s)) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemcpyAsync: not a stream");
    return do_copy("aclrtMemcpyAsync", dst, dmax, src, n, kind, 1);
}

/* ---- sharing ---- */

aclError aclrtDeviceGetBareTgid(int32_t *pid) {
    if (!pid) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtDeviceGetBareTgid: NULL");
    *pid = (int32_t)getpid();
    return OK;
}

static struct share *find_share(uint64_t t) {
    for (struct share *s = shares; s; s = s->next)
        if (s->token == t) return s;
    return NULL;
}

aclError aclrtMemExportToShareableHandle(aclrtDrvMemHandle h, int type, uint64_t flags, uint64_t *out) {
    NEED_INIT();
    if (!out || type != 0 || flags > 1) return fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemExportToShareableHandle: handle type must be NONE, flags 0 or 1");
    aclError rc = OK;
    pthread_mutex_lock(&mu);
    struct phys *p = find_phys(h);
    if (!p) {
        rc = fail(ACL_ERROR_RT_INVALID_HANDLE, "aclrtMemExportToShareableHandle: %p is not a physical memory handle", h);
    } else if (p->imported) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemExportToShareableHandle: an imported handle cannot be exported again");
    } else {
        struct share *s = calloc(1, sizeof *s);
        s->token = next_token++;
        s->fd = dup(p->fd);
        s->device = p->device;
        s->size = p->size;
        s->validate = flags == 0;
        s->origin = p;
        s->next = shares;
        shares = s;
        *out = s->token;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

aclError aclrtMemSetPidToShareableHandle(uint64_t token, int32_t *pids, size_t n) {
    NEED_INIT();
    aclError rc = OK;
    pthread_mutex_lock(&mu);
    struct share *s = find_share(token);
    if (!s) rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemSetPidToShareableHandle: unknown shareable handle %#llx", (unsigned long long)token);
    else if (!pids || !n || s->npids + n > MAX_PIDS) rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemSetPidToShareableHandle: bad pid list");
    else
        for (size_t i = 0; i < n; i++) s->pids[s->npids++] = pids[i];
    pthread_mutex_unlock(&mu);
    return rc;
}

aclError aclrtMemImportFromShareableHandle(uint64_t token, int32_t d, aclrtDrvMemHandle *h) {
    NEED_INIT();
    if (!h || !VALID_DEV(d)) return fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtMemImportFromShareableHandle: bad device %d or NULL", d);
    aclError rc = OK;
    int32_t me = (int32_t)getpid();
    pthread_mutex_lock(&mu);
    struct share *s = find_share(token);
    int allowed = 0;
    if (s && s->validate)
        for (int i = 0; i < s->npids; i++) allowed |= s->pids[i] == me;
    if (!s) {
        rc = fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemImportFromShareableHandle: unknown shareable handle %#llx", (unsigned long long)token);
    } else if (s->validate && !allowed) {
        rc = fail(ACL_ERROR_RT_NO_PERMISSION, "aclrtMemImportFromShareableHandle: pid %d is not on the whitelist of shareable handle %#llx (the exporter must call aclrtMemSetPidToShareableHandle)", me, (unsigned long long)token);
    } else {
        struct phys *p = calloc(1, sizeof *p);
        p->magic = SHIM_MAGIC;
        p->device = d;
        p->size = s->size;
        p->fd = dup(s->fd);
        p->imported = 1;
        p->next = physs;
        physs = p;
        *h = p;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- DCMI: one chip per card, card i = ACL device i ---- */

#define DCMI_ERR_CODE_INVALID_PARAMETER (-8001)
#define DCMI_ERR_CODE_INVALID_DEVICE_ID (-8007)
#define DCMI_ERR_CODE_NOT_SUPPORT (-8255)
#define DCMI_CHIP(c, d) \
    do { if (!VALID_DEV(c) || (d) != 0) return DCMI_ERR_CODE_INVALID_DEVICE_ID; } while (0)

int dcmi_init(void) {
    if (!inited) ndev = (int)env_num("EMOE_SHIM_DEVICES", 2);
    if (ndev < 1 || ndev > MAX_DEV) ndev = 2;
    return 0;
}
int dcmi_get_card_list(int *num, int *list, int len) {
    if (!num || !list || len < ndev) return DCMI_ERR_CODE_INVALID_PARAMETER;
    for (int i = 0; i < ndev; i++) list[i] = i;
    *num = ndev;
    return 0;
}
int dcmi_get_device_num_in_card(int card, int *n) {
    if (!VALID_DEV(card) || !n) return DCMI_ERR_CODE_INVALID_DEVICE_ID;
    *n = 1;
    return 0;
}
int dcmi_get_device_logic_id(int *logic, int card, int dev) {
    DCMI_CHIP(card, dev);
    if (!logic) return DCMI_ERR_CODE_INVALID_PARAMETER;
    *logic = card;
    return 0;
}
int dcmi_get_device_health(int card, int dev, unsigned int *h) {
    DCMI_CHIP(card, dev);
    *h = 0;
    return 0;
}
int dcmi_get_device_temperature(int card, int dev, int *t) {
    DCMI_CHIP(card, dev);
    *t = 45 + card;
    return 0;
}
int dcmi_get_device_power_info(int card, int dev, int *p) {
    DCMI_CHIP(card, dev);
    *p = 1235; /* 123.5 W */
    return 0;
}
int dcmi_get_device_utilization_rate(int card, int dev, int type, unsigned int *u) {
    DCMI_CHIP(card, dev);
    if (type == 13) return DCMI_ERR_CODE_NOT_SUPPORT; /* as on older chips: callers fall back to AI Core */
    *u = type == 2 ? 12u : 5u;
    return 0;
}
int dcmi_get_device_hbm_info(int card, int dev, struct dcmi_hbm_info *h) {
    DCMI_CHIP(card, dev);
    pthread_mutex_lock(&mu);
    h->memory_size = capacity >> 20;
    h->memory_usage = used[card] >> 20;
    pthread_mutex_unlock(&mu);
    h->freq = 1600;
    h->temp = 40 + card;
    h->bandwith_util_rate = 9;
    return 0;
}
