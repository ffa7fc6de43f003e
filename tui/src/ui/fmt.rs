//! Numbers as operators read them: sizes in binary units, durations, rates.

use std::time::Duration;

/// `1.5 GiB`, `512 MiB`, `64 KiB`, `12 B`.
pub fn bytes(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", U[i])
    } else if v >= 10.0 {
        format!("{v:.1} {}", U[i])
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// A rate in bytes per second.
pub fn rate(bps: f64) -> String {
    if !bps.is_finite() || bps <= 0.0 {
        return "–".into();
    }
    format!("{}/s", bytes(bps as u64))
}

/// Seconds as humantime writes them (`1m 5s`, `250ms`), rounded to what matters.
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".into();
    }
    let d = if s >= 60.0 {
        Duration::from_secs(s.round() as u64)
    } else if s >= 1.0 {
        Duration::from_millis((s * 10.0).round() as u64 * 100)
    } else {
        Duration::from_millis((s * 1000.0).round() as u64)
    };
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string()
}

/// Milliseconds with one decimal for latencies.
pub fn ms(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        return "–".into();
    }
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// A percentage.
pub fn pct(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    format!("{:.0}%", x * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(20 << 30), "20.0 GiB");
        assert_eq!(secs(65.4), "1m 5s");
        assert_eq!(secs(1.25), "1s 300ms");
        assert_eq!(secs(0.012), "12ms");
        assert_eq!(secs(f64::NAN), "–");
        assert_eq!(ms(0.0123), "12.3 ms");
        assert_eq!(rate(0.0), "–");
        assert_eq!(pct(0.5), "50%");
    }
}
