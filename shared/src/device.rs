//! The device model: GPUs as a worker sees them, their capability score,
//! the roles they get, and simulated GPUs for machines without one.
//!
//! Detection itself (NVML, the CUDA driver) lives in the worker; this module
//! is pure, so the rules that decide which GPU is `heavy` are the same in
//! the worker, the fleet, the CLI and the tests.
//!
//! # Roles
//!
//! One GPU is `both`. Of two, the more capable is `heavy` (the primary: big
//! models, training) and the other `light` (the secondary: small models,
//! indicators). With more, the upper half by score is `heavy` and the rest
//! `light`. A worker without a GPU is `cpu`. Roles come from the score, never
//! from the product name, and the config file can pin a role to a GPU UUID.
//!
//! # Score
//!
//! `score = FP32 TFLOPS + memory in GiB`. TFLOPS are measured properties:
//! SMs x FP32 cores per SM (from the compute capability) x boost clock x 2
//! (a fused multiply-add is two operations). Memory counts one point per GiB
//! because what a GPU can hold decides which models it can run at all.
//! Simulated GPUs give their TFLOPS directly.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::task::{ParseError, text_enum};

const GIB: f64 = (1u64 << 30) as f64;

text_enum! {
    /// What a worker is for (SPEC.md's routing table).
    #[derive(Default)]
    pub enum Role ("role") {
        /// The primary GPU: heavy and parallel tasks; light ones only when idle.
        Heavy = "heavy",
        /// The secondary GPU: light and parallel tasks; heavy ones it has room
        /// for when the primary is down or busy past a bound.
        Light = "light",
        /// The only GPU: every GPU class.
        Both = "both",
        /// No GPU: cpu tasks, and every class as the last resort.
        #[default]
        Cpu = "cpu",
    }
}

impl Role {
    pub const fn is_gpu(self) -> bool {
        !matches!(self, Role::Cpu)
    }
}

text_enum! {
    /// Whether a worker's device may run tasks. A busy device is a healthy
    /// one with tasks running (the registry's `active`).
    #[derive(Default)]
    pub enum Health ("health") {
        /// Starting, or restarted after a failure: the device is being
        /// checked and takes no tasks yet.
        Probing = "probing",
        /// Takes tasks.
        #[default]
        Healthy = "healthy",
        /// Hit an error that poisons its CUDA context (or hung); its tasks
        /// went back to their streams and the worker is exiting.
        Failed = "failed",
    }
}

/// One GPU, with what detection measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// The CUDA ordinal (after `CUDA_VISIBLE_DEVICES`), or the position in
    /// the simulated list: the `--device` index, not an identity.
    pub index: u32,
    /// `GPU-...` (NVML's and CUDA's form), or `SIM-...` for a simulated one:
    /// the identity a worker binds to.
    pub uuid: String,
    pub name: String,
    /// `0000:01:00.0`; empty for a simulated GPU.
    pub pci_bus_id: String,
    pub memory_total: u64,
    /// The enforced power limit, watts (from NVML, when it is present).
    pub power_limit_w: Option<u32>,
    /// (major, minor); (0, 0) when unknown.
    pub compute_capability: (u32, u32),
    pub sm_count: u32,
    /// Boost clock, MHz.
    pub clock_mhz: u32,
    /// Set for a simulated GPU.
    pub simulated: Option<Simulated>,
}

/// What a simulated GPU adds: its stated throughput and the faults to inject.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Simulated {
    pub tflops: f64,
    pub faults: Faults,
    /// Tasks take as long as on a GPU of this throughput would, relative to
    /// each other: every task's run is stretched to elapsed x
    /// [`PACE_TFLOPS`] / `tflops`, so a fleet of paced GPUs shares work the
    /// way real GPUs of these speeds would (`paced` in the description).
    pub paced: bool,
    /// A model resident on this GPU is booked at this many times its size
    /// (`model_scale=N`), so tests can fill a 12 GiB device with small
    /// model files.
    pub model_scale: u64,
}

/// The throughput a paced simulated GPU runs at the host CPU's speed.
pub const PACE_TFLOPS: f64 = 100.0;

/// Faults a simulated GPU injects, counted per worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// After this many tasks, the next one hits a sticky device error (as
    /// an illegal address does on a real GPU); so does every later call.
    pub fail_after: Option<u64>,
    /// After this many tasks, the next one never finishes (a hung kernel).
    pub hang_after: Option<u64>,
    /// After this many tasks, the worker process dies as the next one starts.
    pub die_after: Option<u64>,
    /// A task declaring more memory than this runs out of device memory.
    pub oom_above: Option<u64>,
    /// The first this many health probes of each process fail.
    pub probe_failures: u32,
    /// The device runs hot: its temperature reads 95 C whatever its load
    /// (`hot` in the description), to exercise temperature alerts.
    pub hot: bool,
    /// The device looks underused: its utilization reads 0.2 while tasks
    /// run (`underused` in the description), to exercise utilization alerts.
    pub underused: bool,
    /// Every model upload hits a sticky device error (`upload_fails` in the
    /// description), as a copy to a GPU that failed does; so does every
    /// later task.
    pub upload_fails: bool,
    /// The device has no NVRTC (`no_nvrtc` in the description): none of
    /// its kernel modules loads, as on a real GPU whose host lacks
    /// libnvrtc, so its compute kinds fall back to the CPU and it says so
    /// (start-up error line, registry record, `/metrics`).
    pub no_nvrtc: bool,
    /// The device has no cuBLAS (`no_cublas` in the description): its
    /// model kinds fall back to the CPU, as on a real GPU whose host lacks
    /// libcublas, and it says so as for `no_nvrtc`.
    pub no_cublas: bool,
}

impl Gpu {
    pub fn is_simulated(&self) -> bool {
        self.simulated.is_some()
    }

    /// FP32 throughput: SMs x cores per SM x clock x 2, or a simulated GPU's
    /// stated figure.
    pub fn fp32_tflops(&self) -> f64 {
        if let Some(sim) = &self.simulated {
            return sim.tflops;
        }
        let cores =
            f64::from(self.sm_count) * f64::from(fp32_cores_per_sm(self.compute_capability));
        cores * f64::from(self.clock_mhz) * 2.0 / 1e6
    }

    pub fn memory_gib(&self) -> f64 {
        self.memory_total as f64 / GIB
    }

    /// The capability score roles are assigned by (see the module docs).
    pub fn score(&self) -> f64 {
        let score = self.fp32_tflops() + self.memory_gib();
        (score * 100.0).round() / 100.0
    }

    /// `8.9`, or `sim` for a simulated GPU.
    pub fn compute_capability_text(&self) -> String {
        if self.is_simulated() {
            "sim".into()
        } else {
            format!(
                "{}.{}",
                self.compute_capability.0, self.compute_capability.1
            )
        }
    }

    /// The name as every output shows it: simulated GPUs say so.
    pub fn label(&self) -> String {
        if self.is_simulated() {
            format!("{} (simulated)", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// FP32 cores per SM by compute capability (CUDA C Programming Guide,
/// "Arithmetic Instructions").
pub fn fp32_cores_per_sm((major, minor): (u32, u32)) -> u32 {
    match (major, minor) {
        (3, _) => 192,
        (5, _) => 128,
        (6, 0) => 64,
        (6, _) => 128,
        (7, _) => 64,
        (8, 0) => 64,
        (8, _) => 128,
        (9, _) => 128,
        (m, _) if m >= 10 => 128,
        _ => 64,
    }
}

/// A GPU's role and why it got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub role: Role,
    pub why: String,
}

/// Roles for a host's GPUs, in the order given. `pins` maps GPU UUIDs to
/// roles from the config file; they win over the score.
pub fn assign_roles(gpus: &[Gpu], pins: &BTreeMap<String, Role>) -> Vec<Assignment> {
    let mut order: Vec<usize> = (0..gpus.len()).collect();
    // Strongest first; equal scores keep index order, so the result is stable.
    order.sort_by(|&a, &b| {
        gpus[b]
            .score()
            .total_cmp(&gpus[a].score())
            .then(gpus[a].index.cmp(&gpus[b].index))
    });
    let mut out = vec![
        Assignment {
            role: Role::Cpu,
            why: String::new(),
        };
        gpus.len()
    ];
    let heavy_count = gpus.len().div_ceil(2);
    for (rank, &i) in order.iter().enumerate() {
        let gpu = &gpus[i];
        out[i] = if let Some(role) = pinned_role(gpu, pins) {
            Assignment {
                role,
                why: "pinned by device_roles in the config".into(),
            }
        } else {
            match gpus.len() {
                1 => Assignment {
                    role: Role::Both,
                    why: "the only GPU".into(),
                },
                2 => {
                    let other = &gpus[order[1 - rank]];
                    let (role, relation) = if rank == 0 {
                        (Role::Heavy, "more")
                    } else {
                        (Role::Light, "less")
                    };
                    Assignment {
                        role,
                        why: format!(
                            "the {relation} capable of two (score {} vs {})",
                            gpu.score(),
                            other.score()
                        ),
                    }
                }
                n => {
                    let (role, half) = if rank < heavy_count {
                        (Role::Heavy, "upper")
                    } else {
                        (Role::Light, "lower")
                    };
                    Assignment {
                        role,
                        why: format!(
                            "rank {} of {n} by score ({}): {half} half",
                            rank + 1,
                            gpu.score()
                        ),
                    }
                }
            }
        };
    }
    out
}

/// Why a simulated-GPU description could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("simulated GPU {item:?}: {message}")]
pub struct SimulateError {
    pub item: String,
    pub message: String,
}

/// Reads simulated GPUs: `;`-separated, each `name, memory, TFLOPS` and any
/// of `fail_after=N`, `hang_after=N`, `die_after=N`, `oom_above=SIZE`,
/// `probe_failures=N`, `uuid=SIM-...`, `model_scale=N` (see
/// [`Simulated::model_scale`]), `paced` (see [`Simulated::paced`]), `hot`
/// (see [`Faults::hot`]), `underused` (see [`Faults::underused`]) and
/// `upload_fails` (see [`Faults::upload_fails`]), `no_nvrtc` (see
/// [`Faults::no_nvrtc`]) and `no_cublas` (see [`Faults::no_cublas`]), as in
/// `RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS`.
/// Sizes take `GiB`, `MiB`, `GB`, `MB` or plain bytes. Each gets the UUID
/// `SIM-<position>-<name>` unless it names one.
pub fn parse_simulated(spec: &str) -> Result<Vec<Gpu>, SimulateError> {
    let mut gpus = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let fail = |message: String| SimulateError {
            item: item.chars().take(80).collect(),
            message,
        };
        let mut parts = item.split(',').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if name.is_empty() || name.contains('=') {
            return Err(fail("starts with the GPU's name".into()));
        }
        let mut memory = None;
        let mut tflops = None;
        let mut faults = Faults::default();
        let mut uuid = None;
        let mut paced = false;
        let mut model_scale = 1;
        for part in parts.filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("paced") {
                paced = true;
            } else if part.eq_ignore_ascii_case("hot") {
                faults.hot = true;
            } else if part.eq_ignore_ascii_case("underused") {
                faults.underused = true;
            } else if part.eq_ignore_ascii_case("upload_fails") {
                faults.upload_fails = true;
            } else if part.eq_ignore_ascii_case("no_nvrtc") {
                faults.no_nvrtc = true;
            } else if part.eq_ignore_ascii_case("no_cublas") {
                faults.no_cublas = true;
            } else if let Some((key, value)) = part.split_once('=') {
                let value = value.trim();
                let count = || {
                    value
                        .parse::<u64>()
                        .map_err(|_| fail(format!("{key} takes a whole number, got {value:?}")))
                };
                match key.trim() {
                    "fail_after" => faults.fail_after = Some(count()?),
                    "hang_after" => faults.hang_after = Some(count()?),
                    "die_after" => faults.die_after = Some(count()?),
                    "probe_failures" => {
                        faults.probe_failures = u32::try_from(count()?)
                            .map_err(|_| fail("probe_failures is too large".into()))?;
                    }
                    "oom_above" => faults.oom_above = Some(parse_size(value).map_err(fail)?),
                    "model_scale" => model_scale = count()?.max(1),
                    "uuid" => {
                        if !value.starts_with("SIM-") || !is_key_safe(value) {
                            return Err(fail(format!(
                                "uuid must start with SIM- and hold only letters, digits, '-', '_', '.', got {value:?}"
                            )));
                        }
                        uuid = Some(value.to_owned());
                    }
                    other => {
                        return Err(fail(format!(
                            "unknown setting {other:?} (fail_after, hang_after, die_after, oom_above, probe_failures, model_scale, uuid)"
                        )));
                    }
                }
            } else if let Some(number) = strip_suffix_ci(part, "tflops") {
                let value: f64 = number
                    .trim()
                    .parse()
                    .map_err(|_| fail(format!("cannot read TFLOPS from {part:?}")))?;
                if !(value.is_finite() && value > 0.0) {
                    return Err(fail("TFLOPS must be positive".into()));
                }
                tflops = Some(value);
            } else {
                memory = Some(parse_size(part).map_err(fail)?);
            }
        }
        let memory = memory.ok_or_else(|| fail("needs a memory size, such as 12 GiB".into()))?;
        let tflops =
            tflops.ok_or_else(|| fail("needs a throughput, such as 40.09 TFLOPS".into()))?;
        let index = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
        let uuid = uuid.unwrap_or_else(|| format!("SIM-{index}-{}", slug(name)));
        gpus.push(Gpu {
            index,
            uuid,
            name: name.to_owned(),
            pci_bus_id: String::new(),
            memory_total: memory,
            power_limit_w: None,
            compute_capability: (0, 0),
            sm_count: 0,
            clock_mhz: 0,
            simulated: Some(Simulated {
                tflops,
                faults,
                paced,
                model_scale,
            }),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for gpu in &gpus {
        if !seen.insert(gpu.uuid.as_str()) {
            return Err(SimulateError {
                item: gpu.name.clone(),
                message: format!("uuid {} is used twice", gpu.uuid),
            });
        }
    }
    Ok(gpus)
}

/// The devices `CUDA_VISIBLE_DEVICES` leaves, renumbered in its order, as
/// the CUDA driver does: entries are indices or UUIDs (a unique prefix is
/// enough), and the list ends at the first entry that names no device.
/// `None` (unset) leaves every device.
pub fn visible(spec: Option<&str>, gpus: Vec<Gpu>) -> Vec<Gpu> {
    let Some(spec) = spec else {
        return gpus;
    };
    let mut out: Vec<Gpu> = Vec::new();
    for entry in spec.split(',').map(str::trim) {
        let found = if let Ok(index) = entry.parse::<u32>() {
            gpus.iter().find(|g| g.index == index)
        } else if entry.is_empty() {
            None
        } else {
            let mut matches = gpus.iter().filter(|g| g.uuid.starts_with(entry));
            match (matches.next(), matches.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            }
        };
        let Some(gpu) = found else { break };
        if out.iter().any(|g| g.uuid == gpu.uuid) {
            break;
        }
        let mut gpu = gpu.clone();
        gpu.index = u32::try_from(out.len()).unwrap_or(u32::MAX);
        out.push(gpu);
    }
    out
}

/// Which device a worker runs on: `cpu`, a GPU UUID (or a unique prefix),
/// or a GPU's index among the visible ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    Cpu,
    Index(u32),
    Uuid(String),
}

impl FromStr for DeviceSelector {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("cpu") {
            Ok(DeviceSelector::Cpu)
        } else if let Ok(index) = s.parse() {
            Ok(DeviceSelector::Index(index))
        } else if is_key_safe(s) {
            Ok(DeviceSelector::Uuid(s.to_owned()))
        } else {
            Err(ParseError::new("device (cpu, a GPU UUID or an index)", s))
        }
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::Cpu => f.write_str("cpu"),
            DeviceSelector::Index(i) => write!(f, "{i}"),
            DeviceSelector::Uuid(u) => f.write_str(u),
        }
    }
}

impl DeviceSelector {
    /// The GPU this selects, or why none.
    pub fn pick<'a>(&self, gpus: &'a [Gpu]) -> Result<Option<&'a Gpu>, String> {
        let known = || {
            if gpus.is_empty() {
                "no GPU is visible".to_owned()
            } else {
                let list: Vec<String> = gpus
                    .iter()
                    .map(|g| format!("{} {}", g.index, g.uuid))
                    .collect();
                format!("visible GPUs: {}", list.join(", "))
            }
        };
        match self {
            DeviceSelector::Cpu => Ok(None),
            DeviceSelector::Index(i) => gpus
                .iter()
                .find(|g| g.index == *i)
                .map(Some)
                .ok_or_else(|| format!("no GPU has index {i}; {}", known())),
            DeviceSelector::Uuid(u) => {
                let matches: Vec<&Gpu> = gpus.iter().filter(|g| g.uuid.starts_with(u)).collect();
                match matches.as_slice() {
                    [one] => Ok(Some(one)),
                    [] => Err(format!("no GPU has UUID {u}; {}", known())),
                    _ => Err(format!("{u} names more than one GPU; {}", known())),
                }
            }
        }
    }
}

/// Reads `GPU-a=heavy, GPU-b=light` (the environment's form of
/// `device_roles`).
pub fn parse_role_pins(text: &str) -> Result<BTreeMap<String, Role>, String> {
    let mut pins = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (uuid, role) = item
            .split_once('=')
            .ok_or_else(|| format!("expected UUID=ROLE, got {item:?}"))?;
        let role: Role = role.trim().parse().map_err(|e: ParseError| e.to_string())?;
        pins.insert(uuid.trim().to_owned(), role);
    }
    Ok(pins)
}

/// Checks pinned roles: GPUs take `heavy`, `light` or `both`, and a pin
/// names a GPU by its UUID or a prefix of it, as `--device` does.
pub fn check_role_pins(pins: &BTreeMap<String, Role>) -> Result<(), String> {
    if pins.keys().any(|uuid| uuid.trim().is_empty()) {
        return Err("a pin needs a GPU UUID (or a prefix of one) before `=`".into());
    }
    match pins.iter().find(|(_, role)| !role.is_gpu()) {
        Some((uuid, _)) => Err(format!(
            "{uuid}: a GPU's role is heavy, light or both (a CPU worker is `--device cpu`)"
        )),
        None => Ok(()),
    }
}

/// The role `pins` gives `gpu`: the pin whose UUID is the GPU's or a prefix
/// of it. [`check_pins_match`] has made sure there is at most one.
fn pinned_role(gpu: &Gpu, pins: &BTreeMap<String, Role>) -> Option<Role> {
    pins.iter()
        .filter(|(uuid, _)| gpu.uuid.starts_with(uuid.as_str()))
        .max_by_key(|(uuid, _)| uuid.len())
        .map(|(_, role)| *role)
}

/// Checks pins against this host's GPUs: a pin's UUID (or prefix) names at
/// most one of them, and no GPU is named by two pins. A pin that names none
/// is fine here: one config file may pin the GPUs of several hosts
/// (`tandem-worker detect` notes it).
pub fn check_pins_match(gpus: &[Gpu], pins: &BTreeMap<String, Role>) -> Result<(), String> {
    for uuid in pins.keys() {
        let named: Vec<&str> = gpus
            .iter()
            .filter(|g| g.uuid.starts_with(uuid.as_str()))
            .map(|g| g.uuid.as_str())
            .collect();
        if named.len() > 1 {
            return Err(format!(
                "device_roles: {uuid} names more than one GPU ({}); give more of the UUID",
                named.join(", ")
            ));
        }
    }
    for gpu in gpus {
        let by: Vec<&str> = pins
            .keys()
            .filter(|uuid| gpu.uuid.starts_with(uuid.as_str()))
            .map(String::as_str)
            .collect();
        if by.len() > 1 {
            return Err(format!(
                "device_roles: GPU {} is pinned more than once ({}); keep one",
                gpu.uuid,
                by.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether a pin (a UUID or a prefix of one) names one of `gpus`.
pub fn pin_names_any(pin: &str, gpus: &[Gpu]) -> bool {
    gpus.iter().any(|g| g.uuid.starts_with(pin))
}

/// `12 GiB`, `512MiB`, `8 GB`, `1000000`: bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let units: [(&str, f64); 6] = [
        ("gib", GIB),
        ("mib", (1u64 << 20) as f64),
        ("kib", 1024.0),
        ("gb", 1e9),
        ("mb", 1e6),
        ("b", 1.0),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| strip_suffix_ci(text, unit).map(|n| (n.trim(), *scale)))
        .unwrap_or((text, 1.0));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("cannot read a size from {text:?} (say 12 GiB)"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{text:?} is not a size"));
    }
    Ok((value * scale).round() as u64)
}

/// Bytes as `12.0 GiB` / `512 MiB`, for tables and logs.
pub fn format_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.0} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{bytes} B")
    }
}

fn strip_suffix_ci<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    (text.is_char_boundary(cut) && text[cut..].eq_ignore_ascii_case(suffix)).then(|| &text[..cut])
}

fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

fn is_key_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS";

    fn real(index: u32, name: &str, cc: (u32, u32), sms: u32, clock_mhz: u32, gib: u64) -> Gpu {
        Gpu {
            index,
            uuid: format!("GPU-{index:08x}-0000-0000-0000-000000000000"),
            name: name.into(),
            pci_bus_id: format!("0000:{:02x}:00.0", index + 1),
            memory_total: gib << 30,
            power_limit_w: Some(300),
            compute_capability: cc,
            sm_count: sms,
            clock_mhz,
            simulated: None,
        }
    }

    #[test]
    fn the_seeds_pair_parses_and_the_stronger_is_heavy() {
        let gpus = parse_simulated(SEED).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "RTX 4070 Ti");
        assert_eq!(gpus[0].uuid, "SIM-0-rtx-4070-ti");
        assert_eq!(gpus[0].memory_total, 12 << 30);
        assert_eq!(gpus[1].uuid, "SIM-1-rtx-3060-ti");
        assert!((gpus[1].fp32_tflops() - 16.2).abs() < 1e-9);
        assert_eq!(gpus[0].score(), 52.09);
        assert_eq!(gpus[0].label(), "RTX 4070 Ti (simulated)");

        let roles = assign_roles(&gpus, &BTreeMap::new());
        assert_eq!(roles[0].role, Role::Heavy);
        assert_eq!(roles[1].role, Role::Light);
        assert!(
            roles[0].why.contains("more capable of two"),
            "{}",
            roles[0].why
        );
        // Order of detection does not matter; capability does.
        let mut swapped = gpus.clone();
        swapped.reverse();
        let roles = assign_roles(&swapped, &BTreeMap::new());
        assert_eq!(roles[0].role, Role::Light);
        assert_eq!(roles[1].role, Role::Heavy);
    }

    #[test]
    fn scores_come_from_measured_properties_not_names() {
        // An H100 SXM: 132 SMs of compute capability 9.0 at 1980 MHz.
        let h100 = real(0, "NVIDIA H100 80GB HBM3", (9, 0), 132, 1980, 80);
        assert!(
            (h100.fp32_tflops() - 66.9).abs() < 0.1,
            "{}",
            h100.fp32_tflops()
        );
        // A card named like a flagship with few SMs scores low.
        let odd = real(1, "NVIDIA H100 (cut down)", (8, 6), 10, 1500, 8);
        let roles = assign_roles(&[odd, h100], &BTreeMap::new());
        assert_eq!(roles[0].role, Role::Light);
        assert_eq!(roles[1].role, Role::Heavy);
    }

    #[test]
    fn one_gpu_is_both_and_more_are_tiered() {
        let one = parse_simulated("A, 8 GiB, 10 TFLOPS").unwrap();
        assert!(!one[0].simulated.as_ref().unwrap().paced);
        let paced = parse_simulated("A, 8 GiB, paced, 10 TFLOPS").unwrap();
        assert!(paced[0].simulated.as_ref().unwrap().paced);
        assert!(!paced[0].simulated.as_ref().unwrap().faults.hot);
        let hot = parse_simulated("A, 8 GiB, 10 TFLOPS, hot").unwrap();
        assert!(hot[0].simulated.as_ref().unwrap().faults.hot);
        let underused = parse_simulated("A, 8 GiB, 10 TFLOPS, underused").unwrap();
        assert!(underused[0].simulated.as_ref().unwrap().faults.underused);
        assert_eq!(assign_roles(&one, &BTreeMap::new())[0].role, Role::Both);

        let four = parse_simulated(
            "a, 8 GiB, 10 TFLOPS; b, 24 GiB, 80 TFLOPS; c, 16 GiB, 30 TFLOPS; d, 4 GiB, 5 TFLOPS",
        )
        .unwrap();
        let roles: Vec<Role> = assign_roles(&four, &BTreeMap::new())
            .iter()
            .map(|a| a.role)
            .collect();
        assert_eq!(roles, [Role::Light, Role::Heavy, Role::Heavy, Role::Light]);
        let three =
            parse_simulated("a, 8 GiB, 10 TFLOPS; b, 24 GiB, 80 TFLOPS; c, 16 GiB, 30 TFLOPS")
                .unwrap();
        let roles: Vec<Role> = assign_roles(&three, &BTreeMap::new())
            .iter()
            .map(|a| a.role)
            .collect();
        assert_eq!(roles, [Role::Light, Role::Heavy, Role::Heavy]);
        assert!(assign_roles(&[], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn pins_win_over_the_score() {
        let gpus = parse_simulated(SEED).unwrap();
        let pins = parse_role_pins("SIM-1-rtx-3060-ti=heavy, SIM-0-rtx-4070-ti = light").unwrap();
        let roles = assign_roles(&gpus, &pins);
        assert_eq!(roles[0].role, Role::Light);
        assert_eq!(roles[1].role, Role::Heavy);
        assert!(roles[1].why.contains("pinned"));
        assert!(check_role_pins(&pins).is_ok());
        assert!(check_role_pins(&parse_role_pins("GPU-x=cpu").unwrap()).is_err());
        assert!(parse_role_pins("GPU-x").is_err());
        assert!(parse_role_pins("GPU-x=primary").is_err());
    }

    #[test]
    fn pins_take_a_unique_uuid_prefix() {
        let gpus = parse_simulated(SEED).unwrap();
        let pins = parse_role_pins("SIM-1=heavy, SIM-0-rtx=light").unwrap();
        assert!(check_pins_match(&gpus, &pins).is_ok());
        let roles = assign_roles(&gpus, &pins);
        assert_eq!(roles[0].role, Role::Light);
        assert_eq!(roles[1].role, Role::Heavy);
        assert!(roles[1].why.contains("pinned"));

        let ambiguous = parse_role_pins("SIM-=heavy").unwrap();
        let err = check_pins_match(&gpus, &ambiguous).unwrap_err();
        assert!(
            err.contains("SIM- names more than one GPU")
                && err.contains("SIM-0-rtx-4070-ti, SIM-1-rtx-3060-ti"),
            "{err}"
        );
        let twice = parse_role_pins("SIM-1=heavy, SIM-1-rtx=light").unwrap();
        let err = check_pins_match(&gpus, &twice).unwrap_err();
        assert!(err.contains("pinned more than once"), "{err}");
        // Another host's GPU: not an error here.
        let elsewhere = parse_role_pins("GPU-elsewhere=heavy").unwrap();
        assert!(check_pins_match(&gpus, &elsewhere).is_ok());
        assert!(!pin_names_any("GPU-elsewhere", &gpus));
        assert!(check_role_pins(&parse_role_pins(" =heavy").unwrap()).is_err());
    }

    #[test]
    fn faults_and_uuids_parse() {
        let gpus = parse_simulated(
            "A, 512 MiB, 1.5 TFLOPS, fail_after=3, oom_above=256MiB, probe_failures=2, uuid=SIM-a; B, 1GB, 2 tflops, hang_after=0, die_after=7, upload_fails, no_nvrtc, NO_CUBLAS",
        )
        .unwrap();
        let a = gpus[0].simulated.as_ref().unwrap();
        assert_eq!(a.faults.fail_after, Some(3));
        assert_eq!(a.faults.oom_above, Some(256 << 20));
        assert_eq!(a.faults.probe_failures, 2);
        assert_eq!(gpus[0].uuid, "SIM-a");
        assert_eq!(gpus[0].memory_total, 512 << 20);
        let b = gpus[1].simulated.as_ref().unwrap();
        assert_eq!(b.faults.hang_after, Some(0));
        assert_eq!(b.faults.die_after, Some(7));
        assert!(b.faults.upload_fails && !a.faults.upload_fails);
        assert!(b.faults.no_nvrtc && b.faults.no_cublas);
        assert!(!a.faults.no_nvrtc && !a.faults.no_cublas);
        assert_eq!(gpus[1].memory_total, 1_000_000_000);
        assert!(parse_simulated("").unwrap().is_empty());
    }

    #[test]
    fn bad_descriptions_say_what_is_wrong() {
        for (spec, needle) in [
            ("RTX, 12 GiB", "TFLOPS"),
            ("RTX, 40 TFLOPS", "memory"),
            ("RTX, twelve, 40 TFLOPS", "size"),
            ("RTX, 12 GiB, fast TFLOPS", "TFLOPS"),
            ("RTX, 12 GiB, 0 TFLOPS", "positive"),
            ("RTX, 12 GiB, 1 TFLOPS, explode=1", "unknown setting"),
            ("RTX, 12 GiB, 1 TFLOPS, fail_after=-1", "whole number"),
            ("RTX, 12 GiB, 1 TFLOPS, uuid=GPU-1", "SIM-"),
            ("fail_after=1, 12 GiB, 1 TFLOPS", "name"),
            (
                "a, 1 GiB, 1 TFLOPS, uuid=SIM-x; b, 1 GiB, 1 TFLOPS, uuid=SIM-x",
                "twice",
            ),
        ] {
            let err = parse_simulated(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn cuda_visible_devices_filters_and_renumbers() {
        let gpus =
            parse_simulated("a, 1 GiB, 1 TFLOPS; b, 1 GiB, 1 TFLOPS; c, 1 GiB, 1 TFLOPS").unwrap();
        let names = |v: Vec<Gpu>| -> Vec<(u32, String)> {
            v.into_iter().map(|g| (g.index, g.name)).collect()
        };
        assert_eq!(names(visible(None, gpus.clone())).len(), 3);
        assert_eq!(
            names(visible(Some("2,0"), gpus.clone())),
            [(0, "c".to_owned()), (1, "a".to_owned())]
        );
        assert_eq!(
            names(visible(Some("SIM-1-b"), gpus.clone())),
            [(0, "b".to_owned())]
        );
        // A unique prefix is enough; an ambiguous one ends the list.
        assert_eq!(
            names(visible(Some("SIM-2"), gpus.clone())),
            [(0, "c".to_owned())]
        );
        assert!(visible(Some("SIM-"), gpus.clone()).is_empty());
        // The list ends at the first entry that names no device.
        assert_eq!(
            names(visible(Some("1,7,0"), gpus.clone())),
            [(0, "b".to_owned())]
        );
        assert!(visible(Some(""), gpus.clone()).is_empty());
        assert!(visible(Some("-1"), gpus).is_empty());
    }

    #[test]
    fn selectors_pick_by_uuid_or_index() {
        let gpus = parse_simulated(SEED).unwrap();
        let pick = |s: &str| {
            s.parse::<DeviceSelector>()
                .unwrap()
                .pick(&gpus)
                .map(|g| g.map(|g| g.name.clone()))
        };
        assert_eq!(pick("cpu"), Ok(None));
        assert_eq!(pick("1"), Ok(Some("RTX 3060 Ti".into())));
        assert_eq!(pick("SIM-0"), Ok(Some("RTX 4070 Ti".into())));
        assert!(pick("SIM-").unwrap_err().contains("more than one"));
        assert!(pick("5").unwrap_err().contains("SIM-0-rtx-4070-ti"));
        assert!("a b".parse::<DeviceSelector>().is_err());
    }

    #[test]
    fn sizes_read_and_print() {
        assert_eq!(parse_size("12 GiB"), Ok(12 << 30));
        assert_eq!(parse_size("1.5gib"), Ok(3 << 29));
        assert_eq!(parse_size("8 GB"), Ok(8_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert_eq!(format_size(12 << 30), "12.0 GiB");
        assert_eq!(format_size(512 << 20), "512 MiB");
    }
}
