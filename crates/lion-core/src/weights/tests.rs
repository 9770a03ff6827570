use super::*;
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};

fn draw(seed: u64, key: &str, h: Init, shape: (usize, usize)) -> Vec<f32> {
    let loader = WeightLoader::random().with_init_seed(seed);
    let vb = loader.var_builder(DType::F32, &Device::Cpu);
    vb.get_with_hints(shape, key, h)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

#[test]
fn seeded_init_is_reproducible_per_key_and_has_the_asked_distribution() {
    let normal = Init::Randn {
        mean: 0.5,
        stdev: 0.02,
    };
    let a = draw(7, "w", normal, (200, 100));
    assert_eq!(a, draw(7, "w", normal, (200, 100)));
    assert_ne!(a, draw(8, "w", normal, (200, 100)));
    assert_ne!(a, draw(7, "v", normal, (200, 100)));
    let (m, s) = mean_std(&a);
    assert!((m - 0.5).abs() < 1e-3 && (s - 0.02).abs() < 1e-3, "{m} {s}");
    let u = draw(1, "u", Init::Uniform { lo: -2.0, up: 1.0 }, (100, 100));
    assert!(u.iter().all(|&x| (-2.0..1.0).contains(&x)));
    let (m, _) = mean_std(&u);
    assert!((m + 0.5).abs() < 0.05, "{m}");
    let k = draw(
        1,
        "k",
        Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::Linear,
        },
        (400, 64),
    );
    let (_, s) = mean_std(&k);
    assert!((s - 1.0 / 8.0).abs() < 0.005, "{s}");
    assert!(draw(3, "c", Init::Const(0.25), (3, 3))
        .iter()
        .all(|&x| x == 0.25));
}
