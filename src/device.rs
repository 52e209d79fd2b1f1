//! Device and thread selection: `auto`, `cpu`, `cuda`, `cuda:N`. Under MPI the
//! rank's local index picks a GPU modulo the visible count.

use crate::error::{Error, Result};
use tch::Device;

/// A parsed device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A GPU when one is visible, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU chosen by local rank.
    Cuda,
    /// A given GPU.
    CudaIndex(usize),
}

/// Parses a device string.
pub fn parse_device(s: &str) -> Result<DeviceSpec> {
    match s.trim() {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::CudaIndex)
            .ok_or_else(|| Error::Config(format!("device '{other}': expected auto, cpu, cuda or cuda:N"))),
    }
}

/// Number of visible CUDA devices.
pub fn cuda_count() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// Resolves a request for the process with the given local rank.
pub fn resolve(spec: DeviceSpec, local_rank: usize) -> Result<Device> {
    let n = cuda_count();
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto if n == 0 => Ok(Device::Cpu),
        DeviceSpec::Auto | DeviceSpec::Cuda if n > 0 => Ok(Device::Cuda(local_rank % n)),
        DeviceSpec::Cuda | DeviceSpec::Auto => Err(Error::Config(
            "device 'cuda' requested but no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)".into(),
        )),
        DeviceSpec::CudaIndex(i) if i < n => Ok(Device::Cuda(i)),
        DeviceSpec::CudaIndex(i) => {
            Err(Error::Config(format!("device 'cuda:{i}' requested but {n} CUDA device(s) are visible")))
        }
    }
}

/// Number of cores this process may use (affinity-aware).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Sets libtorch's intra-op threads (0: all available cores) and returns the count used.
pub fn set_threads(requested: usize) -> usize {
    let n = if requested == 0 { available_cores() } else { requested };
    tch::set_num_threads(n as i32);
    n
}
