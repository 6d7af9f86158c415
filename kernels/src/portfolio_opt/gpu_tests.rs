use super::refine::max_abs_diff;
use super::*;

fn covariance(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut cov = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let rho = if i == j { 1.0 } else { 0.3 };
            let sd = 0.1 + 0.2 * ((i * 7 % 13) as f64 / 13.0);
            let sd_j = 0.1 + 0.2 * ((j * 7 % 13) as f64 / 13.0);
            cov[i * n + j] = rho * sd * sd_j;
        }
    }
    let mu = (0..n)
        .map(|i| 0.03 + 0.08 * ((i * 5 % 11) as f64 / 11.0))
        .collect();
    (mu, cov)
}

/// The GPU's best score equals the CPU twin's within f32 rounding
/// (1e-4 relative), and both refines agree within 1e-7.
#[test]
fn gpu_search_matches_the_cpu_twin() {
    let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
    assert!(gpu.disabled.is_empty(), "{:?}", gpu.disabled);
    for n in [3, 100, 517] {
        let (mu, cov) = covariance(n);
        for (objective, bound) in [
            (Objective::MinVariance, 1.0),
            (Objective::MaxSharpe, 1.0),
            (Objective::MinVariance, 0.9f64.max(2.0 / n as f64)),
            // At most 1: n = 3 would ask 5/3, which `Problem::new` refuses.
            (Objective::MaxSharpe, (5.0 / n as f64).clamp(0.4, 1.0)),
        ] {
            let problem = Problem::new(&mu, &cov, 0.01, objective, bound).unwrap();
            let s = Settings {
                tolerance: 1e-12,
                max_iterations: 100_000,
                seed: 99,
                samples: 10_001,
            };
            let cpu = search_cpu(&problem, &s);
            let gpu_best = search_gpu(&gpu, &problem, &s).unwrap();
            let scale = cpu.score.abs().max(1e-30);
            assert!(
                (cpu.score - gpu_best.score).abs() <= 1e-4 * scale,
                "n {n} {objective:?}: cpu {cpu:?} gpu {gpu_best:?}"
            );
            // Cut into runs of whole search blocks, the GPU merges to
            // its own whole search bit for bit.
            let blocks = search_blocks(s.samples);
            for runs in [2, 3, blocks] {
                let per = blocks.div_ceil(runs);
                let merged = merge_bests((0..blocks).step_by(per as usize).map(|first| {
                    let range = block_candidates(s.samples, first..(first + per).min(blocks));
                    search_gpu_range(&gpu, &problem, &s, range).unwrap()
                }))
                .unwrap();
                assert_eq!(
                    merged.index, gpu_best.index,
                    "n {n} {objective:?} {runs} runs"
                );
                assert_eq!(merged.score.to_bits(), gpu_best.score.to_bits());
            }
            let a = refine(&problem, &s, cpu);
            let b = optimize_gpu(&gpu, &problem, &s).unwrap();
            let diff = max_abs_diff(&a.weights, &b.weights);
            assert!(
                diff <= 1e-7,
                "n {n} {objective:?}: weights differ by {diff}"
            );
        }
    }
}

/// The smaller tiles (8 candidates from 760 assets, 4 from 1528): the
/// GPU's best within f32 rounding of the CPU twin's, and runs cut off
/// tile boundaries (every candidate in another place of its tile) merging
/// to the whole search bit for bit.
#[test]
fn gpu_search_small_tiles_match_the_cpu_twin_and_merge_exactly() {
    let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
    assert!(gpu.disabled.is_empty(), "{:?}", gpu.disabled);
    for (n, tile) in [(1000, 8), (1600, 4)] {
        assert_eq!(gpu_tile(n), Some(tile));
        let (mu, cov) = covariance(n);
        for objective in [Objective::MinVariance, Objective::MaxSharpe] {
            let problem = Problem::new(&mu, &cov, 0.01, objective, 1.0).unwrap();
            let s = Settings {
                tolerance: 1e-12,
                max_iterations: 1,
                seed: 5,
                samples: 600,
            };
            let cpu = search_cpu(&problem, &s);
            let whole = search_gpu(&gpu, &problem, &s).unwrap();
            let scale = cpu.score.abs().max(1e-30);
            assert!(
                (cpu.score - whole.score).abs() <= 1e-4 * scale,
                "n {n} {objective:?}: cpu {cpu:?} gpu {whole:?}"
            );
            for cut in [1, 3, 301] {
                let merged = merge_bests([
                    search_gpu_range(&gpu, &problem, &s, 0..cut).unwrap(),
                    search_gpu_range(&gpu, &problem, &s, cut..600).unwrap(),
                ])
                .unwrap();
                assert_eq!(merged.index, whole.index, "n {n} {objective:?} cut {cut}");
                assert_eq!(merged.score.to_bits(), whole.score.to_bits());
            }
        }
    }
}
