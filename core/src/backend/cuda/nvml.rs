//! NVIDIA telemetry through NVML (`libnvidia-ml.so.1`), loaded at run time.
//!
//! GPUs are matched to CUDA devices by PCI bus id: NVML enumerates in PCI order while CUDA's
//! default order is fastest-first, so indices need not agree.

use std::ffi::{CStr, CString, c_char};
use std::path::Path;

use super::ffi::*;
use crate::backend::dynlib::{self, LibrarySpec, Opened};
use crate::backend::{BackendError, BackendResult, DeviceTelemetry};

pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";
pub const NVML_ENV: &str = "EMOE_NVML_LIB";

pub(crate) fn nvml_spec() -> LibrarySpec {
    LibrarySpec {
        library: NVML_LIBRARY,
        env_var: NVML_ENV,
        paths: vec![
            "/usr/local/nvidia/lib64/libnvidia-ml.so.1".into(),
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1".into(),
            "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1".into(),
            "/usr/lib64/libnvidia-ml.so.1".into(),
            "/usr/lib/wsl/lib/libnvidia-ml.so.1".into(),
        ],
        sonames: &[NVML_LIBRARY],
        sonames_first: true,
    }
}

struct Fns {
    shutdown: unsafe extern "C" fn() -> NvmlReturn,
    by_pci: unsafe extern "C" fn(*const c_char, *mut NvmlDevice) -> NvmlReturn,
    memory: unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> NvmlReturn,
    utilization: unsafe extern "C" fn(NvmlDevice, *mut NvmlUtilization) -> NvmlReturn,
    temperature: unsafe extern "C" fn(NvmlDevice, i32, *mut u32) -> NvmlReturn,
    power: unsafe extern "C" fn(NvmlDevice, *mut u32) -> NvmlReturn,
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
}

/// The loaded and initialised NVML.
pub struct Nvml {
    f: Fns,
    lib: Opened,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml")
            .field("path", &self.lib.path)
            .finish()
    }
}

/// One GPU as NVML knows it.
#[derive(Clone, Copy, Debug)]
pub struct NvmlGpu(NvmlDevice);
// SAFETY: an opaque NVML handle, valid process-wide while NVML is initialised; NVML is thread-safe.
unsafe impl Send for NvmlGpu {}
// SAFETY: as for `Send`.
unsafe impl Sync for NvmlGpu {}

impl Nvml {
    /// Open and initialise NVML (`explicit`, else `EMOE_NVML_LIB`, else the loader path).
    pub fn open(explicit: Option<&Path>) -> BackendResult<Self> {
        let lib = dynlib::open(&nvml_spec(), explicit)?;
        macro_rules! r {
            ($n:literal) => {
                dynlib::symbol(&lib, NVML_LIBRARY, $n)?
            };
        }
        // SAFETY: the types are the nvml.h signatures; the pointers live beside `lib`.
        let (init, f) = unsafe {
            let init: unsafe extern "C" fn() -> NvmlReturn = r!("nvmlInit_v2");
            let f = Fns {
                shutdown: r!("nvmlShutdown"),
                by_pci: r!("nvmlDeviceGetHandleByPciBusId_v2"),
                memory: r!("nvmlDeviceGetMemoryInfo"),
                utilization: r!("nvmlDeviceGetUtilizationRates"),
                temperature: r!("nvmlDeviceGetTemperature"),
                power: r!("nvmlDeviceGetPowerUsage"),
                error_string: r!("nvmlErrorString"),
            };
            (init, f)
        };
        let nvml = Self { f, lib };
        // SAFETY: no arguments; NVML reference-counts init/shutdown pairs.
        nvml.check("nvmlInit_v2", unsafe { init() })?;
        Ok(nvml)
    }

    pub fn path(&self) -> &str {
        &self.lib.path
    }

    fn check(&self, api: &'static str, code: NvmlReturn) -> BackendResult<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: returns a static NUL-terminated string for any code.
        let p = unsafe { (self.f.error_string)(code) };
        let message = if p.is_null() {
            "no description".to_string()
        } else {
            // SAFETY: non-NULL static string per NVML.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        };
        Err(BackendError::Driver {
            api,
            code: code.into(),
            name: format!("NVML_ERROR_{code}"),
            message,
        })
    }

    /// The GPU at PCI bus id `bus` (as `cuDeviceGetPCIBusId` prints it).
    pub fn gpu(&self, bus: &str) -> BackendResult<NvmlGpu> {
        let c = CString::new(bus).map_err(|_| BackendError::Driver {
            api: "nvmlDeviceGetHandleByPciBusId_v2",
            code: 2,
            name: "NVML_ERROR_INVALID_ARGUMENT".into(),
            message: format!("bus id {bus:?} contains a NUL byte"),
        })?;
        let mut d: NvmlDevice = std::ptr::null_mut();
        // SAFETY: NUL-terminated input and a valid out-pointer.
        self.check("nvmlDeviceGetHandleByPciBusId_v2", unsafe {
            (self.f.by_pci)(c.as_ptr(), &mut d)
        })?;
        Ok(NvmlGpu(d))
    }

    /// One reading of `gpu`; values NVML does not give stay `None`.
    pub fn read(&self, gpu: NvmlGpu) -> DeviceTelemetry {
        let d = gpu.0;
        let mut t = DeviceTelemetry {
            source: "nvml".into(),
            ..DeviceTelemetry::default()
        };
        let mut m = NvmlMemory::default();
        // SAFETY: a handle from `gpu` and a valid out-pointer of the nvml.h layout.
        if unsafe { (self.f.memory)(d, &mut m) } == 0 {
            t.memory_total = Some(m.total);
            t.memory_used = Some(m.used);
        }
        let mut u = NvmlUtilization::default();
        // SAFETY: as above.
        if unsafe { (self.f.utilization)(d, &mut u) } == 0 {
            t.utilization_pct = Some(u.gpu);
            t.memory_utilization_pct = Some(u.memory);
        }
        let mut v = 0u32;
        // SAFETY: as above.
        if unsafe { (self.f.temperature)(d, NVML_TEMPERATURE_GPU, &mut v) } == 0 {
            t.temperature_c = i32::try_from(v).ok();
        }
        // SAFETY: as above; milliwatts.
        if unsafe { (self.f.power)(d, &mut v) } == 0 {
            t.power_mw = Some(v.into());
        }
        t
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: balances the `nvmlInit_v2` in `open`.
        let _ = unsafe { (self.f.shutdown)() };
    }
}
