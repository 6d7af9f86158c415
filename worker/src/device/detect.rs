//! Which GPUs this host has.
//!
//! Real GPUs come from the CUDA driver (which applies `CUDA_VISIBLE_DEVICES`
//! and numbers devices fastest-first by default) joined with NVML (which
//! numbers them in PCI order and ignores `CUDA_VISIBLE_DEVICES`) by UUID, or
//! by PCI bus id when a UUID does not match, never by index. NVML adds the
//! power limit. Both libraries are probed before use: without a driver the
//! host has no GPU, and says why in one line.
//!
//! Simulated GPUs (`simulate_gpus`) replace detection entirely, with
//! `CUDA_VISIBLE_DEVICES` applied to them as the driver would.

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_kernels::driver::{self, CudaDevice};
use tandem_shared::Config;
use tandem_shared::device::{self, Assignment, Gpu, Role};

/// What detection found.
#[derive(Debug, Clone)]
pub struct Detection {
    pub gpus: Vec<Gpu>,
    /// Where the list came from, or why it is empty.
    pub source: String,
    /// A note worth one log line (NVML missing, a device NVML could not
    /// match), if any.
    pub note: Option<String>,
}

/// NVML's view of one GPU.
#[derive(Debug, Clone)]
struct NvmlDevice {
    uuid: String,
    pci: (u32, u32, u32),
    power_limit_w: Option<u32>,
}

impl Detection {
    /// The host's GPUs: simulated ones when configured, else real ones.
    /// Fails on a bad `simulate_gpus` and on `device_roles` pins that name
    /// more than one of the GPUs found.
    pub fn run(config: &Config) -> Result<Self, String> {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let detection = if config.simulate_gpus.trim().is_empty() {
            Self::real()
        } else {
            Self::simulated(config, visible.as_deref())?
        };
        device::check_pins_match(&detection.gpus, &config.device_roles)?;
        Ok(detection)
    }

    /// Simulated GPUs from the configuration.
    pub fn simulated(config: &Config, visible: Option<&str>) -> Result<Self, String> {
        let gpus = device::parse_simulated(&config.simulate_gpus).map_err(|e| e.to_string())?;
        let count = gpus.len();
        let gpus = device::visible(visible, gpus);
        let mut source = format!("{count} simulated GPUs (simulate_gpus)");
        if let Some(v) = visible {
            source.push_str(&format!(
                ", {} visible (CUDA_VISIBLE_DEVICES={v})",
                gpus.len()
            ));
        }
        Ok(Detection {
            gpus,
            source,
            note: None,
        })
    }

    /// Real GPUs: the CUDA driver's list, joined with NVML's.
    pub fn real() -> Self {
        let cuda = match driver::devices() {
            Ok(devices) => devices,
            Err(why) => {
                return Detection {
                    gpus: Vec::new(),
                    source: format!("no GPU: {why}; this host runs CPU workers only"),
                    note: None,
                };
            }
        };
        let (nvml, note) = match nvml_devices() {
            Ok(list) => (list, None),
            Err(why) => (
                Vec::new(),
                Some(format!(
                    "NVML unavailable ({why}): GPUs come from the CUDA driver alone, without power limits"
                )),
            ),
        };
        let (gpus, unmatched) = join(cuda, &nvml);
        let note = match (note, unmatched.is_empty()) {
            (Some(n), _) => Some(n),
            (None, false) => Some(format!(
                "NVML does not list {} (matched by UUID and PCI bus id): no power limit for them",
                unmatched.join(", ")
            )),
            (None, true) => None,
        };
        let source = if gpus.is_empty() {
            "no GPU: the CUDA driver sees none (check CUDA_VISIBLE_DEVICES); this host runs CPU workers only".into()
        } else {
            format!("{} GPUs from the CUDA driver and NVML", gpus.len())
        };
        Detection { gpus, source, note }
    }

    /// The role of each GPU, in order.
    pub fn assignments(&self, config: &Config) -> Vec<Assignment> {
        device::assign_roles(&self.gpus, &config.device_roles)
    }
}

/// Joins CUDA's devices with NVML's by UUID, else PCI bus id. Returns the
/// GPUs and the UUIDs NVML had no entry for.
fn join(cuda: Vec<CudaDevice>, nvml: &[NvmlDevice]) -> (Vec<Gpu>, Vec<String>) {
    let mut unmatched = Vec::new();
    let gpus = cuda
        .into_iter()
        .map(|d| {
            let found = nvml
                .iter()
                .find(|n| n.uuid.eq_ignore_ascii_case(&d.uuid))
                .or_else(|| nvml.iter().find(|n| n.pci == d.pci));
            if found.is_none() && !nvml.is_empty() {
                unmatched.push(d.uuid.clone());
            }
            Gpu {
                index: d.ordinal,
                pci_bus_id: d.pci_bus_id(),
                uuid: d.uuid,
                name: d.name,
                memory_total: d.memory_total,
                power_limit_w: found.and_then(|n| n.power_limit_w),
                compute_capability: d.compute_capability,
                sm_count: d.sm_count,
                clock_mhz: d.clock_mhz,
                simulated: None,
            }
        })
        .collect();
    (gpus, unmatched)
}

fn nvml_devices() -> Result<Vec<NvmlDevice>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let pci = device.pci_info().map_err(|e| e.to_string())?;
        out.push(NvmlDevice {
            uuid: device.uuid().map_err(|e| e.to_string())?,
            pci: (pci.domain, pci.bus, pci.device),
            power_limit_w: device.enforced_power_limit().ok().map(|mw| mw / 1000),
        });
    }
    Ok(out)
}

/// One row of `tandem-worker detect`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub pci_bus_id: String,
    pub memory_bytes: u64,
    pub compute_capability: String,
    pub sms: u32,
    pub clock_mhz: u32,
    pub fp32_tflops: f64,
    pub power_limit_w: Option<u32>,
    pub score: f64,
    pub role: Role,
    pub why: String,
    pub simulated: bool,
}

/// What `detect --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub note: Option<String>,
    pub gpus: Vec<Row>,
    /// Pinned roles that name no GPU here.
    pub unused_pins: Vec<String>,
}

impl Report {
    pub fn new(config: &Config, detection: &Detection) -> Self {
        let gpus = detection
            .gpus
            .iter()
            .zip(detection.assignments(config))
            .map(|(g, a)| Row {
                index: g.index,
                name: g.label(),
                uuid: g.uuid.clone(),
                pci_bus_id: g.pci_bus_id.clone(),
                memory_bytes: g.memory_total,
                compute_capability: g.compute_capability_text(),
                sms: g.sm_count,
                clock_mhz: g.clock_mhz,
                fp32_tflops: (g.fp32_tflops() * 100.0).round() / 100.0,
                power_limit_w: g.power_limit_w,
                score: g.score(),
                role: a.role,
                why: a.why,
                simulated: g.is_simulated(),
            })
            .collect();
        let pins: &BTreeMap<String, Role> = &config.device_roles;
        let unused_pins = pins
            .keys()
            .filter(|uuid| !device::pin_names_any(uuid, &detection.gpus))
            .cloned()
            .collect();
        Report {
            source: detection.source.clone(),
            note: detection.note.clone(),
            gpus,
            unused_pins,
        }
    }

    /// The table `detect` prints.
    pub fn table(&self) -> String {
        let mut out = format!("{}\n", self.source);
        if let Some(note) = &self.note {
            out.push_str(&format!("note: {note}\n"));
        }
        if self.gpus.is_empty() {
            return out;
        }
        let header = [
            "INDEX",
            "NAME",
            "UUID",
            "PCI BUS ID",
            "MEMORY",
            "CC",
            "SMS",
            "TFLOPS",
            "SCORE",
            "ROLE",
            "WHY",
        ];
        let rows: Vec<[String; 11]> = self
            .gpus
            .iter()
            .map(|r| {
                let dash = |v: u32| {
                    if r.simulated {
                        "-".to_owned()
                    } else {
                        v.to_string()
                    }
                };
                [
                    r.index.to_string(),
                    r.name.clone(),
                    r.uuid.clone(),
                    if r.pci_bus_id.is_empty() {
                        "-".into()
                    } else {
                        r.pci_bus_id.clone()
                    },
                    device::format_size(r.memory_bytes),
                    r.compute_capability.clone(),
                    dash(r.sms),
                    format!("{:.2}", r.fp32_tflops),
                    format!("{:.2}", r.score),
                    r.role.to_string(),
                    r.why.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut parts: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            if let Some(last) = parts.last_mut() {
                *last = last.trim_end().to_owned();
            }
            format!("{}\n", parts.join("  "))
        };
        out.push_str(&line(&header.map(str::to_owned)));
        for row in &rows {
            out.push_str(&line(row));
        }
        for pin in &self.unused_pins {
            out.push_str(&format!(
                "note: device_roles pins {pin}, which is not here\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(ordinal: u32, uuid: &str, bus: u32) -> CudaDevice {
        CudaDevice {
            ordinal,
            uuid: uuid.into(),
            name: format!("card {ordinal}"),
            pci: (0, bus, 0),
            memory_total: 8 << 30,
            compute_capability: (8, 9),
            sm_count: 60,
            clock_mhz: 2_500,
        }
    }

    #[test]
    fn devices_join_by_uuid_then_pci_never_by_index() {
        // CUDA orders fastest-first; NVML in PCI order: the two lists
        // disagree on indices.
        let cuda_list = vec![
            cuda(0, "GPU-b", 0x41),
            cuda(1, "GPU-a", 0x01),
            cuda(2, "GPU-c", 0x81),
        ];
        let nvml = vec![
            NvmlDevice {
                uuid: "GPU-A".into(),
                pci: (0, 0x01, 0),
                power_limit_w: Some(200),
            },
            NvmlDevice {
                uuid: "GPU-b".into(),
                pci: (0, 0x41, 0),
                power_limit_w: Some(285),
            },
            // A UUID that does not match (say, a MIG view): found by PCI.
            NvmlDevice {
                uuid: "MIG-x".into(),
                pci: (0, 0x81, 0),
                power_limit_w: Some(450),
            },
        ];
        let (gpus, unmatched) = join(cuda_list, &nvml);
        assert!(unmatched.is_empty());
        let limits: Vec<_> = gpus
            .iter()
            .map(|g| (g.uuid.as_str(), g.power_limit_w))
            .collect();
        assert_eq!(
            limits,
            [
                ("GPU-b", Some(285)),
                ("GPU-a", Some(200)),
                ("GPU-c", Some(450))
            ]
        );
        assert_eq!(gpus[0].pci_bus_id, "0000:41:00.0");

        let (gpus, unmatched) = join(vec![cuda(0, "GPU-z", 0x09)], &nvml);
        assert_eq!(unmatched, ["GPU-z"]);
        assert_eq!(gpus[0].power_limit_w, None);
    }

    #[test]
    fn no_driver_means_no_gpu_and_says_why() {
        if driver::is_present() {
            return; // a GPU machine: covered by scripts/gpu-check
        }
        let detection = Detection::real();
        assert!(detection.gpus.is_empty());
        assert!(detection.source.contains("no GPU"), "{}", detection.source);
        assert!(detection.source.contains("libcuda"), "{}", detection.source);
    }

    #[test]
    fn nvml_missing_is_an_error_not_a_panic() {
        // Without the NVIDIA driver (CI) NVML cannot load; with it, every
        // device it lists has a UUID.
        match nvml_devices() {
            Ok(list) => assert!(list.iter().all(|d| !d.uuid.is_empty())),
            Err(why) => assert!(!why.is_empty()),
        }
    }

    #[test]
    fn the_table_labels_simulated_gpus() {
        let config = Config {
            simulate_gpus: "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS"
                .into(),
            device_roles: [("GPU-gone".to_owned(), Role::Heavy)].into(),
            ..Config::default()
        };
        let detection = Detection::simulated(&config, Some("1,0")).unwrap();
        let report = Report::new(&config, &detection);
        let table = report.table();
        assert!(table.contains("RTX 3060 Ti (simulated)"), "{table}");
        assert!(table.contains("CUDA_VISIBLE_DEVICES=1,0"), "{table}");
        assert!(table.contains("GPU-gone"), "{table}");
        assert_eq!(report.gpus[0].index, 0);
        assert_eq!(report.gpus[0].role, Role::Light);
        assert_eq!(report.gpus[1].role, Role::Heavy);
    }
}
