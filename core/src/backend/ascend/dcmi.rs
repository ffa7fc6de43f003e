//! Ascend telemetry through DCMI (`libdcmi.so`, the library behind `npu-smi`), loaded at run time.
//!
//! DCMI addresses chips as (card, device-in-card); AscendCL addresses them by logical id. The
//! map between the two comes from `dcmi_get_device_logic_id`, with index order as the fallback
//! when a DCMI build lacks it. Each reading queries every value separately and keeps whatever
//! answers: DCMI refuses some queries inside containers (`DCMI_ERR_CODE_NOT_SUPPORT_IN_CONTAINER`)
//! and a missing value must stay unknown, not fail the whole reading.

use std::ffi::c_uint;
use std::path::Path;

use super::error::dcmi_error_name;
use super::ffi::*;
use crate::backend::dynlib::{self, LibrarySpec, Opened};
use crate::backend::{BackendError, BackendResult, DeviceTelemetry, Health};

pub const DCMI_LIBRARY: &str = "libdcmi.so";
pub const DCMI_ENV: &str = "EMOE_DCMI_LIB";
const MIB: u64 = 1 << 20;

pub(crate) fn dcmi_spec() -> LibrarySpec {
    LibrarySpec {
        library: DCMI_LIBRARY,
        env_var: DCMI_ENV,
        paths: vec![
            "/usr/local/dcmi/libdcmi.so".into(),
            "/usr/local/Ascend/driver/lib64/driver/libdcmi.so".into(),
            "/usr/local/Ascend/driver/lib64/libdcmi.so".into(),
        ],
        sonames: &[DCMI_LIBRARY],
        sonames_first: false,
    }
}

struct Fns {
    get_device_logic_id: Option<unsafe extern "C" fn(*mut i32, i32, i32) -> i32>,
    health: Option<unsafe extern "C" fn(i32, i32, *mut c_uint) -> i32>,
    temperature: Option<unsafe extern "C" fn(i32, i32, *mut i32) -> i32>,
    power: Option<unsafe extern "C" fn(i32, i32, *mut i32) -> i32>,
    utilization: Option<unsafe extern "C" fn(i32, i32, i32, *mut c_uint) -> i32>,
    hbm_info: Option<unsafe extern "C" fn(i32, i32, *mut DcmiHbmInfo) -> i32>,
    memory_info: Option<unsafe extern "C" fn(i32, i32, *mut DcmiGetMemoryInfo) -> i32>,
}

/// One NPU chip as DCMI addresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chip {
    pub card: i32,
    pub device: i32,
    /// The logical id AscendCL uses for this chip.
    pub logic_id: i32,
}

/// The loaded DCMI library and the chips it reported at open.
pub struct Dcmi {
    f: Fns,
    chips: Vec<Chip>,
    lib: Opened,
}

impl std::fmt::Debug for Dcmi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dcmi")
            .field("path", &self.lib.path)
            .field("chips", &self.chips)
            .finish()
    }
}

fn check(api: &'static str, code: i32) -> BackendResult<()> {
    if code == 0 {
        return Ok(());
    }
    Err(BackendError::Driver {
        api,
        code: code.into(),
        name: dcmi_error_name(code).to_string(),
        message: "DCMI returns no message text".into(),
    })
}

impl Dcmi {
    /// Open `libdcmi.so` (`explicit`, else `EMOE_DCMI_LIB`, else the driver locations), initialise
    /// it and list the chips.
    pub fn open(explicit: Option<&Path>) -> BackendResult<Self> {
        let lib = dynlib::open(&dcmi_spec(), explicit)?;
        // SAFETY: the types are the C signatures from ffi.md B; the pointers are kept beside
        // `lib`, which lives as long as `Dcmi`.
        let (init, card_list, num_in_card, f) = unsafe {
            let init: unsafe extern "C" fn() -> i32 =
                dynlib::symbol(&lib, DCMI_LIBRARY, "dcmi_init")?;
            // The current name first, then the older one torch_npu still uses.
            let card_list: unsafe extern "C" fn(*mut i32, *mut i32, i32) -> i32 =
                match dynlib::optional(&lib, "dcmi_get_card_list") {
                    Some(f) => f,
                    None => dynlib::symbol(&lib, DCMI_LIBRARY, "dcmi_get_card_num_list")?,
                };
            let num_in_card: unsafe extern "C" fn(i32, *mut i32) -> i32 =
                dynlib::symbol(&lib, DCMI_LIBRARY, "dcmi_get_device_num_in_card")?;
            macro_rules! o {
                ($n:literal) => {
                    dynlib::optional(&lib, $n)
                };
            }
            let f = Fns {
                get_device_logic_id: o!("dcmi_get_device_logic_id"),
                health: o!("dcmi_get_device_health"),
                temperature: o!("dcmi_get_device_temperature"),
                power: o!("dcmi_get_device_power_info"),
                utilization: o!("dcmi_get_device_utilization_rate"),
                hbm_info: o!("dcmi_get_device_hbm_info"),
                memory_info: o!("dcmi_get_device_memory_info_v3"),
            };
            (init, card_list, num_in_card, f)
        };
        // SAFETY: no arguments.
        check("dcmi_init", unsafe { init() })?;
        let mut cards = [0i32; 64];
        let mut n = 0i32;
        // SAFETY: `cards` has room for the length we pass; valid out-pointer for the count.
        check("dcmi_get_card_list", unsafe {
            card_list(&mut n, cards.as_mut_ptr(), cards.len() as i32)
        })?;
        let mut chips = Vec::new();
        for &card in cards.iter().take(n.clamp(0, 64) as usize) {
            let mut devs = 0i32;
            // SAFETY: valid out-pointer.
            check("dcmi_get_device_num_in_card", unsafe {
                num_in_card(card, &mut devs)
            })?;
            for device in 0..devs.max(0) {
                let logic_id = f
                    .get_device_logic_id
                    .and_then(|g| {
                        let mut id = -1;
                        // SAFETY: valid out-pointer, integer ids from DCMI itself.
                        (unsafe { g(&mut id, card, device) } == 0).then_some(id)
                    })
                    .unwrap_or(chips.len() as i32);
                chips.push(Chip {
                    card,
                    device,
                    logic_id,
                });
            }
        }
        Ok(Self { f, chips, lib })
    }

    pub fn path(&self) -> &str {
        &self.lib.path
    }

    pub fn chips(&self) -> &[Chip] {
        &self.chips
    }

    /// The chip AscendCL calls `acl_device`.
    pub fn chip(&self, acl_device: i32) -> Option<Chip> {
        self.chips
            .iter()
            .copied()
            .find(|c| c.logic_id == acl_device)
    }

    /// One reading of `chip`; values DCMI does not give stay `None`.
    pub fn read(&self, chip: Chip) -> DeviceTelemetry {
        let (c, d) = (chip.card, chip.device);
        let mut t = DeviceTelemetry {
            source: "dcmi".into(),
            ..DeviceTelemetry::default()
        };
        if let Some(f) = self.f.hbm_info {
            let mut h = DcmiHbmInfo::default();
            // SAFETY: valid out-pointer to a struct of the documented layout (checked in `ffi`).
            if unsafe { f(c, d, &mut h) } == 0 && h.memory_size > 0 {
                t.memory_total = Some(h.memory_size * MIB);
                t.memory_used = Some(h.memory_usage * MIB);
                t.memory_utilization_pct = Some(h.bandwith_util_rate);
            }
        }
        if t.memory_total.is_none()
            && let Some(f) = self.f.memory_info
        {
            let mut m = DcmiGetMemoryInfo::default();
            // SAFETY: valid out-pointer to a struct of the documented layout (checked in `ffi`).
            if unsafe { f(c, d, &mut m) } == 0 && m.memory_size > 0 {
                t.memory_total = Some(m.memory_size * MIB);
                t.memory_used = Some(m.memory_size.saturating_sub(m.memory_available) * MIB);
            }
        }
        if let Some(f) = self.f.utilization {
            for kind in [DCMI_UTIL_NPU, DCMI_UTIL_AI_CORE] {
                let mut u: c_uint = 0;
                // SAFETY: valid out-pointer.
                if unsafe { f(c, d, kind, &mut u) } == 0 {
                    t.utilization_pct = Some(u);
                    break;
                }
            }
            if t.memory_utilization_pct.is_none() {
                let mut u: c_uint = 0;
                // SAFETY: valid out-pointer.
                if unsafe { f(c, d, DCMI_UTIL_HBM, &mut u) } == 0 {
                    t.memory_utilization_pct = Some(u);
                }
            }
        }
        if let Some(f) = self.f.temperature {
            let mut v = 0i32;
            // SAFETY: valid out-pointer. Below absolute zero means a failed sensor (as MC treats it).
            if unsafe { f(c, d, &mut v) } == 0 && v > -275 {
                t.temperature_c = Some(v);
            }
        }
        if let Some(f) = self.f.power {
            let mut v = 0i32;
            // SAFETY: valid out-pointer. DCMI reports tenths of a watt.
            if unsafe { f(c, d, &mut v) } == 0 && v >= 0 {
                t.power_mw = Some(v as u64 * 100);
            }
        }
        if let Some(f) = self.f.health {
            let mut v: c_uint = 0;
            // SAFETY: valid out-pointer.
            if unsafe { f(c, d, &mut v) } == 0 {
                t.health = Some(Health::from_dcmi(v));
            }
        }
        t
    }
}
