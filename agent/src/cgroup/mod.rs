//! TEMPORARY interface stub; replaced by the real module.
use std::path::{Path, PathBuf};
#[derive(Debug, Clone, Copy)]
pub enum CgroupVersion {
    V1,
    V2,
}
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Unified,
    Legacy,
    Hybrid,
}
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub mode: Mode,
    pub cpu: PathBuf,
    pub cpu_version: CgroupVersion,
    pub cpuacct: Option<PathBuf>,
    pub unified: Option<PathBuf>,
    pub v1_hierarchies: Vec<(String, PathBuf)>,
    pub v2_controllers: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("x")]
    X,
}
impl Layout {
    pub fn detect(_r: &Path) -> Result<Layout, CgroupError> {
        Err(CgroupError::X)
    }
}
#[derive(Debug, Clone, Copy)]
pub enum Qos {
    Guaranteed,
}
impl Qos {
    pub fn as_str(self) -> &'static str {
        ""
    }
}
#[derive(Debug, Clone, Copy)]
pub enum Driver {
    Systemd,
}
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    Containerd,
}
#[derive(Debug, Clone)]
pub enum CgroupKind {
    Pod {
        pod_uid: String,
        qos: Qos,
        driver: Driver,
    },
    Container {
        pod_uid: String,
        container_id: String,
        qos: Qos,
        driver: Driver,
        runtime: Runtime,
    },
    Other,
}
#[derive(Debug, Clone)]
pub struct Discovered {
    pub rel_path: String,
    pub id: u64,
    pub kind: CgroupKind,
}
#[derive(Debug, Clone, Default)]
pub struct DiscoverOptions {
    pub include_non_pod: bool,
    pub max_depth: usize,
}
#[derive(Debug, Default)]
pub struct ErrorCounts;
#[derive(Debug, Clone, Copy)]
pub enum ErrorReason {
    Vanished,
}
impl ErrorReason {
    pub fn as_str(self) -> &'static str {
        ""
    }
}
impl ErrorCounts {
    pub fn iter(&self) -> impl Iterator<Item = (ErrorReason, u64)> {
        std::iter::empty()
    }
}
pub fn discover(_l: &Layout, _o: &DiscoverOptions, _e: &mut ErrorCounts) -> Vec<Discovered> {
    vec![]
}
#[derive(Debug, Default, Clone)]
pub struct CpuStat {
    pub usage_ns: Option<u64>,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub nr_bursts: Option<u64>,
    pub burst_ns: Option<u64>,
    pub force_idle_ns: Option<u64>,
}
#[derive(Debug, Clone)]
pub struct CpuMax {
    pub quota_us: Option<u64>,
    pub period_us: u64,
}
#[derive(Debug, Clone)]
pub struct Pressure {
    pub some_total_us: Option<u64>,
    pub full_total_us: Option<u64>,
}
#[derive(Debug, Clone)]
pub struct CgroupSample {
    pub stat: CpuStat,
    pub local_throttled_ns: Option<u64>,
    pub max: Option<CpuMax>,
    pub burst_us: Option<u64>,
    pub weight: Option<u64>,
    pub pressure: Option<Pressure>,
}
pub fn read_sample(
    _l: &Layout,
    _d: &Discovered,
    _b: &mut String,
    _e: &mut ErrorCounts,
) -> Option<CgroupSample> {
    None
}
