//! Checks that a GPU backend can start before any work is handed to it.
//!
//! Without this, `--backend cuda` on a machine without the NVIDIA driver panics inside
//! cubecl: a worker thread fails to load the library and the main thread then dies on a
//! closed channel, with no word about what is missing.

use crate::{BackendError, BackendKind};

/// The CUDA driver library's names, most specific first.
#[cfg(windows)]
pub const CUDA_DRIVER_LIBRARIES: &[&str] = &["nvcuda.dll"];
#[cfg(not(windows))]
pub const CUDA_DRIVER_LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Loads the CUDA driver (the first of `libraries` that loads), initializes it and checks
/// that device `index` exists.
pub fn probe_cuda(libraries: &[&str], index: usize) -> Result<(), BackendError> {
    let unavailable = |reason: String| BackendError::Unavailable {
        backend: BackendKind::Cuda,
        reason,
    };
    let library = libraries
        .iter()
        // SAFETY: loading the CUDA driver runs its initializers, which is what cubecl
        // would do next anyway; nothing else is called before the checks below.
        .find_map(|name| unsafe { libloading::Library::new(name) }.ok())
        .ok_or_else(|| {
            unavailable(format!(
                "the NVIDIA driver library ({}) is not installed or not on the loader path",
                libraries.join(" or ")
            ))
        })?;
    type CuInit = unsafe extern "C" fn(flags: u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(count: *mut i32) -> i32;
    // SAFETY: the signatures are those of the CUDA driver API (CUresult is a C int).
    let (init, device_count) = unsafe {
        let init = library.get::<CuInit>(b"cuInit\0").map_err(|_| {
            unavailable(format!(
                "{} has no `cuInit`: not a CUDA driver",
                libraries.join("/")
            ))
        })?;
        let count = library
            .get::<CuDeviceGetCount>(b"cuDeviceGetCount\0")
            .map_err(|_| unavailable("the CUDA driver has no `cuDeviceGetCount`".into()))?;
        (init, count)
    };
    // SAFETY: plain driver calls with a valid out-pointer.
    let status = unsafe { init(0) };
    if status != 0 {
        return Err(unavailable(format!(
            "the CUDA driver failed to initialize (CUresult {status}; 100 means no CUDA device)"
        )));
    }
    let mut count = 0i32;
    let status = unsafe { device_count(&mut count) };
    if status != 0 {
        return Err(unavailable(format!(
            "the CUDA driver could not count devices (CUresult {status})"
        )));
    }
    if index >= count.max(0) as usize {
        return Err(unavailable(format!(
            "device {index} does not exist: this machine has {count} CUDA device(s)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_driver_library_is_named() {
        let err = probe_cuda(&["libparagen-no-such-driver.so.1"], 0).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cuda"), "{text}");
        assert!(text.contains("libparagen-no-such-driver.so.1"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_library_that_is_not_the_driver_is_refused() {
        let err = probe_cuda(&["libc.so.6"], 0).unwrap_err();
        assert!(err.to_string().contains("cuInit"), "{err}");
    }
}
