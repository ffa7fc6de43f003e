//! Finding and opening vendor libraries at run time (never linked), and resolving their symbols.
//!
//! Order: an explicit path from the caller, else the environment variable, else the usual install
//! locations, else the plain soname through the dynamic loader's search path. An explicit path or
//! a set environment variable is the operator's word: if it does not load we fail with it rather
//! than quietly picking up some other copy.

use std::path::{Path, PathBuf};

use libloading::Library;

use super::{BackendError, BackendResult};

/// Where one library may live.
pub(crate) struct LibrarySpec {
    /// The name operators know it by, e.g. `libascendcl.so`.
    pub library: &'static str,
    /// The variable that points at a specific file.
    pub env_var: &'static str,
    /// Full paths to try in order, after the variable and before the sonames.
    pub paths: Vec<PathBuf>,
    /// Names handed to the dynamic loader as they are (`LD_LIBRARY_PATH`, `ld.so.cache`).
    pub sonames: &'static [&'static str],
    /// Try the sonames before the paths (the CUDA driver: containers point `LD_LIBRARY_PATH` at
    /// forward-compatibility copies that a fixed path would bypass).
    pub sonames_first: bool,
}

/// An opened library and the path (or soname) it was opened from.
pub(crate) struct Opened {
    pub lib: Library,
    pub path: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("path", &self.path).finish()
    }
}

/// `dir/name` for every `dir` that is set and non-empty.
pub(crate) fn under(dirs: &[Option<PathBuf>], name: &str) -> Vec<PathBuf> {
    dirs.iter().flatten().map(|d| d.join(name)).collect()
}

/// The value of an environment variable when it is set and non-empty.
pub(crate) fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `RTLD_NODELETE` (glibc and musl on Linux): `dlclose` leaves the library mapped. Vendor
/// runtimes start threads and register handlers on init; unloading one under them would crash
/// the process, and a backend dropped mid-process must not do that.
const RTLD_NODELETE: std::ffi::c_int = 0x1000;

fn try_open(name: &str) -> Result<Library, String> {
    use libloading::os::unix::{Library as UnixLibrary, RTLD_LAZY, RTLD_LOCAL};
    // SAFETY: loading a library runs its initialisers. The candidates are the vendor's own
    // runtime libraries (or a file the operator named), whose initialisers are meant to run in
    // any process that uses them; with RTLD_NODELETE their finalisers only run at exit.
    unsafe { UnixLibrary::open(Some(name), RTLD_LAZY | RTLD_LOCAL | RTLD_NODELETE) }
        .map(Library::from)
        .map_err(|e| chain(&e))
}

/// An error and its sources, `: `-separated (libloading keeps the loader's message in `source`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(x) = next {
        s.push_str(": ");
        s.push_str(&x.to_string());
        next = x.source();
    }
    s
}

/// Open `spec`'s library, or say which library, where we looked and which variable overrides it.
pub(crate) fn open(spec: &LibrarySpec, explicit: Option<&Path>) -> BackendResult<Opened> {
    let fixed = explicit
        .map(|p| (p.to_path_buf(), "given by the caller"))
        .or_else(|| env_path(spec.env_var).map(|p| (p, spec.env_var)));
    let mut searched = Vec::new();
    let mut details = Vec::new();
    let mut attempt = |name: String, shown: String, must_exist: bool| -> Option<Opened> {
        searched.push(shown);
        if must_exist && !Path::new(&name).exists() {
            return None;
        }
        match try_open(&name) {
            Ok(lib) => Some(Opened { lib, path: name }),
            Err(e) => {
                details.push(e);
                None
            }
        }
    };
    if let Some((path, why)) = fixed {
        let name = path.to_string_lossy().into_owned();
        let shown = format!("{name} ({why})");
        // Always dlopen an operator-given path, so the loader's own message says what is wrong.
        if let Some(o) = attempt(name, shown, false) {
            return Ok(o);
        }
    } else {
        let paths = spec
            .paths
            .iter()
            .map(|p| (p.to_string_lossy().into_owned(), true));
        let sonames = spec.sonames.iter().map(|s| (s.to_string(), false));
        let order: Vec<(String, bool)> = if spec.sonames_first {
            sonames.chain(paths).collect()
        } else {
            paths.chain(sonames).collect()
        };
        for (name, is_path) in order {
            let shown = if is_path {
                name.clone()
            } else {
                format!("{name} (dynamic loader search path)")
            };
            if let Some(o) = attempt(name, shown, is_path) {
                return Ok(o);
            }
        }
    }
    let detail = if details.is_empty() {
        "not found".to_string()
    } else {
        details.join("; ")
    };
    Err(BackendError::LibraryMissing {
        library: spec.library.to_string(),
        searched: searched.join(", "),
        env_var: spec.env_var,
        detail,
    })
}

/// Resolve `name` in `lib` and copy the function pointer out; a missing symbol is a named error.
///
/// # Safety
/// `T` must be the exact `extern "C"` function-pointer type of the symbol, and the returned
/// pointer must not be called after `lib` is dropped.
pub(crate) unsafe fn symbol<T: Copy>(
    lib: &Opened,
    library: &str,
    name: &'static str,
) -> BackendResult<T> {
    // SAFETY: the caller guarantees `T` matches the symbol's C type (see the function's contract).
    match unsafe { lib.lib.get::<T>(name) } {
        Ok(sym) => Ok(*sym),
        Err(e) => Err(BackendError::SymbolMissing {
            library: format!("{library} ({})", lib.path),
            symbol: name,
            detail: chain(&e),
        }),
    }
}

/// Like [`symbol`] but `None` when absent, for calls a backend can do without.
///
/// # Safety
/// As for [`symbol`].
pub(crate) unsafe fn optional<T: Copy>(lib: &Opened, name: &'static str) -> Option<T> {
    // SAFETY: as in `symbol`, forwarded to the caller.
    unsafe { lib.lib.get::<T>(name) }.ok().map(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_itself_the_places_and_the_variable() {
        let spec = LibrarySpec {
            library: "libemoe-nothing.so",
            env_var: "EMOE_TEST_NOTHING_LIB",
            paths: vec![PathBuf::from("/nonexistent/dir/libemoe-nothing.so")],
            sonames: &["libemoe-nothing.so.7"],
            sonames_first: false,
        };
        let err = open(&spec, None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BackendError::LibraryMissing { .. }), "{text}");
        assert!(text.contains("libemoe-nothing.so"), "{text}");
        assert!(
            text.contains("/nonexistent/dir/libemoe-nothing.so"),
            "{text}"
        );
        assert!(
            text.contains("libemoe-nothing.so.7 (dynamic loader"),
            "{text}"
        );
        assert!(text.contains("EMOE_TEST_NOTHING_LIB"), "{text}");

        let err = open(&spec, Some(Path::new("/also/not/here.so"))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/also/not/here.so (given by the caller)"),
            "{text}"
        );
        assert!(!text.contains("libemoe-nothing.so.7"), "{text}");
    }
}
