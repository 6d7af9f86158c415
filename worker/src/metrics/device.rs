//! Reading a worker's device: a real GPU through NVML (found by its UUID),
//! a simulated GPU from a small model of its load, the CPU not at all.

use std::sync::Arc;
use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};

use crate::device::Device;

/// One reading of a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Reading {
    /// Busy share over the last sample period, 0 to 1.
    pub utilization: f64,
    pub memory_used: u64,
    pub temperature_c: f64,
    pub power_w: f64,
    pub sm_clock_mhz: u32,
}

/// What the worker knows about its own load over the last sample period;
/// a simulated GPU's readings follow it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Load {
    /// Share of the period with at least one task running, 0 to 1.
    pub busy_share: f64,
    /// Device memory the running tasks declared plus the resident models.
    pub memory_booked: u64,
    pub period: Duration,
}

/// Reads one device, sample after sample.
#[derive(Debug)]
pub(crate) enum Gauge {
    /// A CPU worker: no device readings.
    None,
    Nvml(NvmlGauge),
    Simulated(SimulatedGauge),
}

impl Gauge {
    pub fn for_device(device: &Device) -> Self {
        let Some(gpu) = &device.gpu else {
            return Gauge::None;
        };
        match &gpu.simulated {
            Some(sim) => Gauge::Simulated(SimulatedGauge {
                memory_total: gpu.memory_total,
                hot: sim.faults.hot,
                underused: sim.faults.underused,
                power_limit_w: gpu
                    .power_limit_w
                    .map_or_else(|| estimated_power_limit_w(sim.tflops), f64::from),
                boost_mhz: if gpu.clock_mhz > 0 {
                    gpu.clock_mhz
                } else {
                    SIM_BOOST_MHZ
                },
                temperature_c: IDLE_C,
            }),
            None => match Nvml::init() {
                Ok(nvml) => Gauge::Nvml(NvmlGauge {
                    nvml: Arc::new(nvml),
                    uuid: gpu.uuid.clone(),
                    warned: false,
                }),
                Err(err) => {
                    tracing::warn!(device = %gpu.uuid, "NVML is not available ({err}): no device metrics");
                    Gauge::None
                }
            },
        }
    }

    /// The device now; `None` for a CPU worker or when NVML cannot find it.
    pub async fn read(&mut self, load: Load) -> Option<Reading> {
        match self {
            Gauge::None => None,
            Gauge::Nvml(gauge) => gauge.read().await,
            Gauge::Simulated(gauge) => Some(gauge.read(load)),
        }
    }
}

/// A real GPU, read through NVML.
#[derive(Debug)]
pub(crate) struct NvmlGauge {
    nvml: Arc<Nvml>,
    uuid: String,
    /// Set once a failure to find the device was logged, so a worker whose
    /// NVML went away logs it once, not every sample.
    warned: bool,
}

impl NvmlGauge {
    async fn read(&mut self) -> Option<Reading> {
        let nvml = Arc::clone(&self.nvml);
        let uuid = self.uuid.clone();
        // NVML calls block in the driver (usually briefly, but a wedged GPU
        // can hold them): keep them off the runtime's threads.
        let read = tokio::task::spawn_blocking(move || nvml_reading(&nvml, &uuid)).await;
        match read {
            Ok(Ok(reading)) => {
                self.warned = false;
                Some(reading)
            }
            Ok(Err(why)) => {
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(device = %self.uuid, "cannot read the device through NVML: {why}");
                }
                None
            }
            Err(join) => {
                tracing::warn!(device = %self.uuid, "the NVML reading panicked: {join}");
                None
            }
        }
    }
}

/// One NVML reading. A reading the device does not support (power on some
/// boards) reads 0 rather than losing the others.
fn nvml_reading(nvml: &Nvml, uuid: &str) -> Result<Reading, String> {
    let device = nvml.device_by_uuid(uuid).map_err(|e| e.to_string())?;
    let utilization = device
        .utilization_rates()
        .map_or(0.0, |u| f64::from(u.gpu) / 100.0);
    let memory_used = device.memory_info().map_or(0, |m| m.used);
    let temperature_c = device
        .temperature(TemperatureSensor::Gpu)
        .map_or(0.0, f64::from);
    let power_w = device
        .power_usage()
        .map_or(0.0, |mw| f64::from(mw) / 1000.0);
    let sm_clock_mhz = device.clock_info(Clock::SM).unwrap_or(0);
    Ok(Reading {
        utilization,
        memory_used,
        temperature_c,
        power_w,
        sm_clock_mhz,
    })
}

/// An idle GPU's temperature, and a fully busy one's steady temperature.
const IDLE_C: f64 = 35.0;
const BUSY_C: f64 = 80.0;
/// What a `hot` simulated GPU reads.
pub(crate) const HOT_C: f64 = 95.0;
/// What an `underused` simulated GPU's utilization reads while tasks run.
pub(crate) const UNDERUSED_RATIO: f64 = 0.2;
/// How fast the simulated temperature follows the load (time constant).
const THERMAL_TAU: Duration = Duration::from_secs(5);
const IDLE_MHZ: u32 = 210;
const SIM_BOOST_MHZ: u32 = 2_520;
/// What a CUDA context holds on a device before any task.
const CONTEXT_BYTES: u64 = 256 << 20;

/// A board power limit of the size real GPUs of this throughput have
/// (a 16 TFLOPS card draws about 200 W, a 40 TFLOPS one about 285 W).
fn estimated_power_limit_w(tflops: f64) -> f64 {
    (125.0 + 4.0 * tflops).clamp(75.0, 700.0)
}

/// A simulated GPU: plausible readings that follow the worker's load.
#[derive(Debug)]
pub(crate) struct SimulatedGauge {
    memory_total: u64,
    hot: bool,
    underused: bool,
    power_limit_w: f64,
    boost_mhz: u32,
    /// Carried from sample to sample: it moves toward the load's steady
    /// temperature, not to it at once.
    temperature_c: f64,
}

impl SimulatedGauge {
    fn read(&mut self, load: Load) -> Reading {
        let busy_share = load.busy_share.clamp(0.0, 1.0);
        let utilization = if self.underused && busy_share > 0.0 {
            UNDERUSED_RATIO
        } else {
            busy_share
        };
        let steady = IDLE_C + (BUSY_C - IDLE_C) * utilization;
        let step = 1.0 - (-load.period.as_secs_f64() / THERMAL_TAU.as_secs_f64()).exp();
        self.temperature_c += (steady - self.temperature_c) * step;
        let idle_w = self.power_limit_w * 0.08;
        let clock_span = f64::from(self.boost_mhz.saturating_sub(IDLE_MHZ));
        Reading {
            utilization,
            memory_used: (load.memory_booked + CONTEXT_BYTES).min(self.memory_total),
            temperature_c: if self.hot {
                HOT_C
            } else {
                round1(self.temperature_c)
            },
            power_w: round1(idle_w + (self.power_limit_w * 0.9 - idle_w) * utilization),
            sm_clock_mhz: IDLE_MHZ + (clock_span * utilization).round() as u32,
        }
    }
}

/// Rounded to one decimal, as NVML's whole degrees and milliwatts read.
fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulated(hot: bool) -> SimulatedGauge {
        SimulatedGauge {
            memory_total: 8 << 30,
            hot,
            underused: false,
            power_limit_w: estimated_power_limit_w(16.2),
            boost_mhz: SIM_BOOST_MHZ,
            temperature_c: IDLE_C,
        }
    }

    fn load(busy_share: f64) -> Load {
        Load {
            busy_share,
            memory_booked: 1 << 30,
            period: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_simulated_gpu_follows_its_load() {
        let mut gauge = simulated(false);
        let idle = gauge.read(load(0.0));
        assert_eq!(idle.utilization, 0.0);
        assert_eq!(idle.sm_clock_mhz, IDLE_MHZ);
        assert_eq!(idle.temperature_c, IDLE_C);
        assert_eq!(idle.memory_used, (1 << 30) + CONTEXT_BYTES);
        let mut busy = idle;
        for _ in 0..3 {
            let next = gauge.read(load(1.0));
            assert!(next.temperature_c > busy.temperature_c, "{next:?}");
            busy = next;
        }
        assert!(busy.temperature_c < BUSY_C);
        assert!(busy.power_w > idle.power_w * 5.0, "{busy:?}");
        assert_eq!(busy.sm_clock_mhz, SIM_BOOST_MHZ);
        assert_eq!(busy.utilization, 1.0);
        // Cooling down again.
        assert!(gauge.read(load(0.0)).temperature_c < busy.temperature_c);
    }

    #[test]
    fn a_hot_simulated_gpu_reads_95_c() {
        let mut gauge = simulated(true);
        assert_eq!(gauge.read(load(0.0)).temperature_c, HOT_C);
        assert_eq!(gauge.read(load(1.0)).temperature_c, HOT_C);
    }

    #[test]
    fn an_underused_simulated_gpu_reads_0_2_while_busy() {
        let mut gauge = SimulatedGauge {
            underused: true,
            ..simulated(false)
        };
        assert_eq!(gauge.read(load(0.0)).utilization, 0.0);
        assert_eq!(gauge.read(load(1.0)).utilization, UNDERUSED_RATIO);
    }

    #[test]
    fn memory_never_reads_over_the_total() {
        let mut gauge = simulated(false);
        let over = Load {
            memory_booked: 64 << 30,
            ..load(0.5)
        };
        assert_eq!(gauge.read(over).memory_used, 8 << 30);
    }
}
