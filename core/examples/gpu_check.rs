//! VMM micro-benchmarks through the `cuda` backend, printed as one JSON object on stdout:
//! map and unmap latency per granule (medians of many), device-to-device copy bandwidth, and the
//! device's telemetry. Run by `scripts/gpu-check.sh`; without a usable GPU it prints
//! `{"skipped": "<reason>"}` and exits 0.
//!
//! `cargo run --release -p emoe-core --example gpu_check -- [--granules N] [--rounds R]
//!  [--copy-mib M] [--copies C] [--logical K]`

use std::time::Instant;

use emoe_core::DeviceId;
use emoe_core::backend::cuda::{CudaBackend, CudaOptions};
use emoe_core::backend::{BackendError, DeviceBackend};
use serde_json::{Value, json};

struct Args {
    granules: u64,
    rounds: u32,
    copy_mib: u64,
    copies: u32,
    logical: u32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        granules: 256,
        rounds: 8,
        copy_mib: 1024,
        copies: 10,
        logical: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{flag} {v}: not a whole number"))?;
        match flag.as_str() {
            "--granules" => a.granules = n.max(1),
            "--rounds" => a.rounds = n.clamp(1, 1000) as u32,
            "--copy-mib" => a.copy_mib = n.max(1),
            "--copies" => a.copies = n.clamp(1, 1000) as u32,
            "--logical" => a.logical = n.clamp(1, 64) as u32,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Median, 10th and 90th percentile and minimum of samples in microseconds.
fn summary(mut us: Vec<f64>) -> Value {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    json!({"samples": us.len(), "median": at(0.5), "p10": at(0.1), "p90": at(0.9), "min": us[0]})
}

fn map_unmap(b: &CudaBackend, a: &Args) -> Result<Value, BackendError> {
    let d = DeviceId::new(0, 0);
    let g = b.devices()[0].granularity;
    let handles = (0..a.granules)
        .map(|_| b.alloc_physical(d, g))
        .collect::<Result<Vec<_>, _>>()?;
    let r = b.reserve(d, g * a.granules)?;
    let (mut map_us, mut unmap_us) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        for (i, &h) in handles.iter().enumerate() {
            let t = Instant::now();
            b.map(r, r.base + i as u64 * g, h)?;
            map_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for i in 0..a.granules {
            let t = Instant::now();
            b.unmap(r, r.base + i * g, g)?;
            unmap_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    b.release(r)?;
    for h in handles {
        b.free_physical(h)?;
    }
    Ok(json!({
        "granule_bytes": g,
        "what": "one DeviceBackend::map / unmap of one granule: cuMemMap + cuMemSetAccess (map) or cuMemUnmap, plus bookkeeping",
        "map_us": summary(map_us),
        "unmap_us": summary(unmap_us),
    }))
}

fn copy_bw(b: &CudaBackend, a: &Args) -> Result<Value, BackendError> {
    let g = b.devices()[0].granularity;
    let bytes = (a.copy_mib << 20).div_ceil(g) * g;
    let (d0, d1) = (DeviceId::new(0, 0), DeviceId::new(0, 1));
    let src = b.alloc_physical(d0, bytes)?;
    let same = b.alloc_physical(d0, bytes)?;
    let other = if b.devices().len() > 1 {
        Some(b.alloc_physical(d1, bytes)?)
    } else {
        None
    };
    b.write(src, 0, &vec![0x5a; 1 << 20])?;
    let mut run = |dst| -> Result<Value, BackendError> {
        b.copy(src, 0, dst, 0, bytes)?; // warm-up
        let mut gbps = Vec::new();
        for _ in 0..a.copies {
            let t = Instant::now();
            b.copy(src, 0, dst, 0, bytes)?;
            gbps.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        gbps.sort_by(f64::total_cmp);
        Ok(json!({"median_gb_per_s": gbps[gbps.len() / 2], "max_gb_per_s": gbps[gbps.len() - 1]}))
    };
    let same_device = run(same)?;
    let cross = other.map(&mut run).transpose()?;
    for h in [Some(src), Some(same), other].into_iter().flatten() {
        b.free_physical(h)?;
    }
    Ok(json!({
        "bytes": bytes,
        "what": "DeviceBackend::copy (cuMemcpyDtoDAsync_v2 + stream sync), bytes copied per second (not read+written)",
        "same_device": same_device,
        "cross_logical_device": cross,
        "logical_note": "logical devices are slices of one GPU: a cross-logical copy is an on-device copy, not a peer-to-peer link",
    }))
}

/// Expert-sized copies (one granule each) one after another and from several threads at once:
/// a scaling step is hundreds of such copies, so their fixed cost per copy (launch + stream
/// sync), not the copy engine's bandwidth, can set its copy time.
fn small_copies(b: &CudaBackend) -> Result<Value, BackendError> {
    const N: usize = 256;
    const THREADS: usize = 4;
    let g = b.devices()[0].granularity;
    let d1 = DeviceId::new(0, (b.devices().len() > 1) as u32);
    let src = (0..N)
        .map(|_| b.alloc_physical(DeviceId::new(0, 0), g))
        .collect::<Result<Vec<_>, _>>()?;
    let dst = (0..N)
        .map(|_| b.alloc_physical(d1, g))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..N {
        b.copy(src[i], 0, dst[i], 0, g)?; // warm-up
    }
    let mut us = Vec::with_capacity(N);
    let t_all = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        b.copy(src[i], 0, dst[i], 0, g)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let serial_s = t_all.elapsed().as_secs_f64();
    let t_par = Instant::now();
    std::thread::scope(|s| -> Result<(), BackendError> {
        let hs: Vec<_> = (0..THREADS)
            .map(|k| {
                let (src, dst) = (&src, &dst);
                s.spawn(move || -> Result<(), BackendError> {
                    for i in (k..N).step_by(THREADS) {
                        b.copy(src[i], 0, dst[i], 0, g)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().expect("copy thread panicked")?;
        }
        Ok(())
    })?;
    let par_s = t_par.elapsed().as_secs_f64();
    for h in src.into_iter().chain(dst) {
        b.free_physical(h)?;
    }
    let total = (N as u64 * g) as f64;
    Ok(json!({
        "copies": N,
        "bytes_each": g,
        "what": "DeviceBackend::copy of one granule each, 0/0 → another logical device",
        "serial_us": summary(us),
        "serial_gb_per_s": total / serial_s / 1e9,
        "threads": THREADS,
        "threaded_gb_per_s": total / par_s / 1e9,
    }))
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            std::process::exit(2);
        }
    };
    let opts = CudaOptions {
        logical_per_gpu: a.logical,
        ..CudaOptions::default()
    };
    let b = match CudaBackend::open(&opts) {
        Ok(b) if !b.devices().is_empty() => b,
        Ok(_) => {
            println!(
                "{}",
                json!({"skipped": "libcuda.so.1 loaded but reports no GPU"})
            );
            return;
        }
        Err(e) => {
            println!("{}", json!({"skipped": e.to_string()}));
            return;
        }
    };
    let result = (|| -> Result<Value, BackendError> {
        let devices: Vec<Value> = b
            .devices()
            .iter()
            .map(|d| json!({"id": d.id.to_string(), "name": d.name, "capacity": d.capacity, "granularity": d.granularity}))
            .collect();
        Ok(json!({
            "backend": "cuda",
            "library": b.driver().cuda().path(),
            "logical_per_gpu": a.logical,
            "devices": devices,
            "vmm": map_unmap(&b, &a)?,
            "d2d_copy": copy_bw(&b, &a)?,
            "small_copies": small_copies(&b)?,
            "telemetry": b.telemetry(DeviceId::new(0, 0))?,
        }))
    })();
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({"error": e.to_string()}));
            std::process::exit(1);
        }
    }
}
