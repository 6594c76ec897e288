//! `vitals`: simulated ICU vital signs cut into labelled sliding windows.
//!
//! Each item is one patient, simulated minute by minute from `item.seed` alone: heart rate, SpO2,
//! respiratory rate and systolic blood pressure follow mean-reverting (Ornstein-Uhlenbeck)
//! processes around patient-specific baselines, and randomly timed deterioration episodes shift
//! their means. The series is cut into sliding windows; each window becomes one row of summary
//! features and a label telling whether an episode starts within the prediction horizon after the
//! window. See `docs/VITALS.md` for the model and the columns.
//!
//! The output is a pure function of (`item.key`, `item.seed`, params) and uses only the frozen
//! generator of [`crate::run::rng`] and correctly rounded float operations, so it is identical on every
//! platform and in every version: the tests pin it.

use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};

use super::Builtin;
use crate::error::{Invalid, Reason};
use crate::format::csv_out::RowWriter;
use crate::run::items::Item;
use crate::run::rng::Rng;
use crate::run::types::ColumnType;

/// Parameter names, in documentation order.
const KNOWN_PARAMS: [&str; 5] = ["hours", "window", "step", "horizon", "episode_rate"];

const DEFAULT_HOURS: u64 = 24;
const DEFAULT_WINDOW: u64 = 60;
const DEFAULT_STEP: u64 = 30;
const DEFAULT_HORIZON: u64 = 120;
const DEFAULT_EPISODE_RATE: f64 = 1.0;

/// Longest simulation: one year.
const MAX_HOURS: u64 = 365 * 24;
/// Longest window, step or horizon (minutes): one year.
const MAX_MINUTES: u64 = MAX_HOURS * 60;
/// Highest episode rate (per 24 h): one per minute on average.
const MAX_EPISODE_RATE: f64 = 1440.0;

/// Episode shape (minutes unless stated). Every episode has a prodrome (a slow drift of
/// `PRODROME_FRACTION` of its severity, starting `prodrome` minutes before the onset), a ramp to
/// full severity starting at the onset, a plateau until `duration` after the onset, and a linear
/// recovery.
const PRODROME: (f64, f64) = (60.0, 180.0);
const PRODROME_FRACTION: f64 = 0.3;
const RAMP: (f64, f64) = (15.0, 60.0);
const DURATION: (f64, f64) = (60.0, 360.0);
const RECOVERY: (f64, f64) = (20.0, 90.0);
const SEVERITY: (f64, f64) = (0.3, 1.0);
/// No episode affects minutes before `onset - MAX_LEAD` or from `onset + MAX_TAIL` on.
const MAX_LEAD: u64 = PRODROME.1 as u64;
const MAX_TAIL: u64 = (DURATION.1 + RECOVERY.1) as u64 + 1;

/// Per-patient multiplier of each vital's variability.
const NOISE_SCALE: (f64, f64) = (0.75, 1.35);

/// One vital sign's model.
struct Vital {
    name: &'static str,
    /// Patient baseline ~ N(mean, sd), clipped to [lo, hi].
    base_mean: f64,
    base_sd: f64,
    base_lo: f64,
    base_hi: f64,
    /// Mean reversion per minute (fraction of the gap to the mean closed each minute).
    theta: f64,
    /// Stationary standard deviation of the process (before the patient's noise scale).
    sd: f64,
    /// Shift of the mean at deterioration level 1.
    effect: f64,
    /// Physiological range every value is clipped to.
    lo: f64,
    hi: f64,
}

const VITALS: [Vital; 4] = [
    Vital {
        name: "hr",
        base_mean: 75.0,
        base_sd: 10.0,
        base_lo: 45.0,
        base_hi: 120.0,
        theta: 0.10,
        sd: 4.0,
        effect: 35.0,
        lo: 30.0,
        hi: 220.0,
    },
    Vital {
        name: "spo2",
        base_mean: 97.0,
        base_sd: 1.2,
        base_lo: 90.0,
        base_hi: 99.5,
        theta: 0.20,
        sd: 0.8,
        effect: -7.0,
        lo: 50.0,
        hi: 100.0,
    },
    Vital {
        name: "rr",
        base_mean: 16.0,
        base_sd: 2.5,
        base_lo: 8.0,
        base_hi: 30.0,
        theta: 0.15,
        sd: 1.5,
        effect: 10.0,
        lo: 4.0,
        hi: 60.0,
    },
    Vital {
        name: "sbp",
        base_mean: 120.0,
        base_sd: 15.0,
        base_lo: 80.0,
        base_hi: 190.0,
        theta: 0.05,
        sd: 6.0,
        effect: -35.0,
        lo: 50.0,
        hi: 250.0,
    },
];

const STATS: [&str; 5] = ["mean", "std", "min", "max", "slope"];

/// The `vitals` generator, configured by its params.
#[derive(Debug, Clone, PartialEq)]
pub struct Vitals {
    hours: u64,
    window: u64,
    step: u64,
    horizon: u64,
    episode_rate: f64,
}

impl Default for Vitals {
    fn default() -> Self {
        Self {
            hours: DEFAULT_HOURS,
            window: DEFAULT_WINDOW,
            step: DEFAULT_STEP,
            horizon: DEFAULT_HORIZON,
            episode_rate: DEFAULT_EPISODE_RATE,
        }
    }
}

impl Vitals {
    /// Validates `params` (all optional: `hours`, `window`, `step`, `horizon`, `episode_rate`).
    /// Errors name the offending parameter, e.g.
    /// `generator.params.window: must be a positive integer (got -3)`.
    pub fn new(params: &Map<String, Value>) -> Result<Vitals, Invalid> {
        if let Some(unknown) = params.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
            return Err(format!(
                "generator.params.{unknown}: unknown parameter (known: {})",
                KNOWN_PARAMS.join(", ")
            )
            .into());
        }
        let hours = positive_int(params, "hours", DEFAULT_HOURS, MAX_HOURS)?;
        let window = positive_int(params, "window", DEFAULT_WINDOW, MAX_MINUTES)?;
        let step = positive_int(params, "step", DEFAULT_STEP, MAX_MINUTES)?;
        let horizon = positive_int(params, "horizon", DEFAULT_HORIZON, MAX_MINUTES)?;
        let minutes = hours * 60;
        if window > minutes {
            return Err(format!(
                "generator.params.window: must be at most hours*60 = {minutes} minutes \
                 (got {window})"
            )
            .into());
        }
        let episode_rate = match params.get("episode_rate") {
            None => DEFAULT_EPISODE_RATE,
            Some(v) => match v.as_f64() {
                Some(r) if (0.0..=MAX_EPISODE_RATE).contains(&r) => r,
                Some(r) if r > MAX_EPISODE_RATE => {
                    return Err(format!(
                        "generator.params.episode_rate: must be at most {MAX_EPISODE_RATE} \
                         episodes per 24 h (got {v})"
                    )
                    .into())
                }
                _ => {
                    return Err(format!(
                        "generator.params.episode_rate: must be a non-negative number (got {v})"
                    )
                    .into())
                }
            },
        };
        Ok(Vitals {
            hours,
            window,
            step,
            horizon,
            episode_rate,
        })
    }

    /// Number of rows each item produces.
    #[cfg(test)]
    pub fn rows_per_item(&self) -> u64 {
        (self.hours * 60 - self.window) / self.step + 1
    }
}

fn positive_int(
    params: &Map<String, Value>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, Invalid> {
    let Some(v) = params.get(name) else {
        return Ok(default);
    };
    match v.as_u64() {
        Some(n) if n > 0 && n <= max => Ok(n),
        Some(n) if n > max => {
            Err(format!("generator.params.{name}: must be at most {max} (got {n})").into())
        }
        _ => Err(format!("generator.params.{name}: must be a positive integer (got {v})").into()),
    }
}

impl Builtin for Vitals {
    fn columns(&self) -> Vec<String> {
        let mut cols = Vec::with_capacity(4 + VITALS.len() * STATS.len());
        cols.extend(["patient", "window_start", "window_end"].map(String::from));
        for v in &VITALS {
            for s in STATS {
                cols.push(format!("{}_{s}", v.name));
            }
        }
        cols.push("label".to_string());
        cols
    }

    fn column_types(&self) -> Vec<ColumnType> {
        let mut types = vec![ColumnType::String, ColumnType::Int64, ColumnType::Int64];
        types.resize(3 + VITALS.len() * STATS.len(), ColumnType::Float64);
        // The label is 0 or 1, as ML tools take a binary target.
        types.push(ColumnType::Int64);
        types
    }

    fn generate(&self, item: &Item, out: &mut RowWriter, stop: &AtomicBool) -> Result<(), Reason> {
        let minutes = (self.hours * 60) as usize;
        let mut master = Rng::new(item.seed);
        // Independent streams, so that e.g. a longer simulation (or another horizon) leaves the
        // shared prefix of the series unchanged.
        let mut patient_rng = Rng::new(master.next_u64());
        let mut episode_rng = Rng::new(master.next_u64());
        let mut noise_rng = Rng::new(master.next_u64());

        // Patient: baselines, noise scales and starting deviations.
        let mut base = [0.0; 4];
        let mut sigma = [0.0; 4];
        let mut start_dev = [0.0; 4];
        for (i, v) in VITALS.iter().enumerate() {
            base[i] = (v.base_mean + v.base_sd * patient_rng.normal()).clamp(v.base_lo, v.base_hi);
            let sd = v.sd * patient_rng.uniform(NOISE_SCALE.0, NOISE_SCALE.1);
            // Innovation sd giving a stationary sd of `sd` for x' = x + theta (mu - x) + sigma z.
            sigma[i] = sd * (v.theta * (2.0 - v.theta)).sqrt();
            start_dev[i] = sd * patient_rng.normal();
        }

        // Episodes: a Poisson process of onsets over the simulated span and beyond it, far enough
        // for every window's label and every prodrome reaching into the span. `level[t]` is the
        // total deterioration level at minute t.
        let mut level = vec![0.0f64; minutes];
        let mut onsets: Vec<u64> = Vec::new();
        if self.episode_rate > 0.0 {
            let rate_per_minute = self.episode_rate / 1440.0;
            let end = (minutes as u64 + self.horizon.max(MAX_LEAD)) as f64;
            let mut t = 0.0;
            loop {
                t += episode_rng.exponential(rate_per_minute);
                if t >= end {
                    break;
                }
                let onset = t as u64; // floor: t >= 0
                let episode = Episode {
                    severity: episode_rng.uniform(SEVERITY.0, SEVERITY.1),
                    prodrome: episode_rng.uniform(PRODROME.0, PRODROME.1),
                    ramp: episode_rng.uniform(RAMP.0, RAMP.1),
                    duration: episode_rng.uniform(DURATION.0, DURATION.1),
                    recovery: episode_rng.uniform(RECOVERY.0, RECOVERY.1),
                };
                let from = onset.saturating_sub(MAX_LEAD) as usize;
                let to = ((onset + MAX_TAIL) as usize).min(minutes);
                for (m, l) in level.iter_mut().enumerate().take(to).skip(from) {
                    *l += episode.level(m as f64 - onset as f64);
                }
                onsets.push(onset);
            }
        }

        // Vitals, minute by minute (Euler-discretised Ornstein-Uhlenbeck, clipped).
        let mut series = vec![[0.0f64; 4]; minutes];
        let mut x = [0.0; 4];
        for (i, v) in VITALS.iter().enumerate() {
            x[i] = (base[i] + v.effect * level[0] + start_dev[i]).clamp(v.lo, v.hi);
        }
        series[0] = x;
        for (t, row) in series.iter_mut().enumerate().skip(1) {
            let l = level[t];
            for (i, v) in VITALS.iter().enumerate() {
                let mu = base[i] + v.effect * l;
                let z = noise_rng.normal();
                x[i] = (x[i] + v.theta * (mu - x[i]) + sigma[i] * z).clamp(v.lo, v.hi);
            }
            *row = x;
        }

        // Windows.
        let window = self.window as usize;
        let w = window as f64;
        let t_mean = (w - 1.0) / 2.0;
        let sxx = w * (w * w - 1.0) / 12.0;
        let mut next_onset = 0;
        let mut start = 0usize;
        let mut windows = 0u32;
        while start + window <= minutes {
            windows = windows.wrapping_add(1);
            if windows.is_multiple_of(256) && stop.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            let end = start + window;
            let rows = &series[start..end];
            let mut sum = [0.0; 4];
            let mut min = [f64::INFINITY; 4];
            let mut max = [f64::NEG_INFINITY; 4];
            for r in rows {
                for i in 0..4 {
                    sum[i] += r[i];
                    min[i] = min[i].min(r[i]);
                    max[i] = max[i].max(r[i]);
                }
            }
            let mean = sum.map(|s| s / w);
            let mut ss = [0.0; 4];
            let mut sxy = [0.0; 4];
            for (k, r) in rows.iter().enumerate() {
                let dt = k as f64 - t_mean;
                for i in 0..4 {
                    let d = r[i] - mean[i];
                    ss[i] += d * d;
                    sxy[i] += dt * d;
                }
            }

            let end_u = end as u64;
            while next_onset < onsets.len() && onsets[next_onset] < end_u {
                next_onset += 1;
            }
            let label = next_onset < onsets.len() && onsets[next_onset] < end_u + self.horizon;

            out.field(item.key.as_bytes());
            out.field_display(start);
            out.field_display(end);
            for i in 0..4 {
                write_fixed(out, mean[i], 2);
                write_fixed(out, (ss[i] / w).sqrt(), 2);
                write_fixed(out, min[i], 2);
                write_fixed(out, max[i], 2);
                write_fixed(out, if sxx > 0.0 { sxy[i] / sxx } else { 0.0 }, 4);
            }
            out.field(if label { b"1" } else { b"0" });
            out.end_record();
            start += self.step as usize;
        }
        Ok(())
    }
}

/// One deterioration episode's shape, relative to its onset (minute 0).
struct Episode {
    severity: f64,
    prodrome: f64,
    ramp: f64,
    duration: f64,
    recovery: f64,
}

impl Episode {
    /// Deterioration level `dt` minutes after the onset (negative: before it).
    #[inline]
    fn level(&self, dt: f64) -> f64 {
        let s = self.severity;
        if dt < -self.prodrome {
            0.0
        } else if dt < 0.0 {
            s * PRODROME_FRACTION * (dt + self.prodrome) / self.prodrome
        } else if dt < self.ramp {
            s * (PRODROME_FRACTION + (1.0 - PRODROME_FRACTION) * dt / self.ramp)
        } else if dt < self.duration {
            s
        } else if dt < self.duration + self.recovery {
            s * (1.0 - (dt - self.duration) / self.recovery)
        } else {
            0.0
        }
    }
}

/// Writes `x` rounded to `decimals` fixed decimals as one field, without allocating.
///
/// The rounding is exact (on the binary value, ties to even) and computed here rather than by the
/// standard library's float formatting, so the text can never change with the toolchain. Zero is
/// never signed ("-0.00" is written "0.00").
fn write_fixed(out: &mut RowWriter, x: f64, decimals: u32) {
    let mut buf = [0u8; 40];
    match fixed(x, decimals, &mut buf) {
        Some(len) => out.field(&buf[..len]),
        // Not finite or too large: no vital gets here (they are clipped), kept for completeness.
        None => out.field_display(format_args!("{x:.prec$}", prec = decimals as usize)),
    }
}

/// Formats `x` with `decimals` (at most 4) decimals into `buf`, returning the length; `None` if
/// `x` is not finite or `|x| >= 1e15`.
fn fixed(x: f64, decimals: u32, buf: &mut [u8; 40]) -> Option<usize> {
    debug_assert!(decimals <= 4);
    if !x.is_finite() || x.abs() >= 1e15 {
        return None;
    }
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let biased_exp = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    // |x| = mantissa * 2^exp exactly.
    let (mantissa, exp) = if biased_exp == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased_exp - 1075)
    };
    let scale = 10u64.pow(decimals);
    // Below 2^67: no overflow.
    let scaled = u128::from(mantissa) * u128::from(scale);
    // n = |x| * 10^decimals rounded to the nearest integer, ties to even.
    let n: u128 = if exp >= 0 {
        scaled << exp
    } else {
        let shift = exp.unsigned_abs();
        if shift >= 128 {
            0 // |x| * 10^decimals < 2^-60
        } else {
            let q = scaled >> shift;
            let rem = scaled & ((1u128 << shift) - 1);
            let half = 1u128 << (shift - 1);
            if rem > half || (rem == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
    };
    let n = n as u64; // < 1e15 * 1e4 + 1 < 2^64
    let mut digits = [0u8; 24];
    let mut len = 0;
    let mut rest = n;
    // At least one integer digit, plus `decimals` fraction digits.
    while len < decimals as usize + 1 || rest > 0 {
        digits[len] = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
    }
    let mut pos = 0;
    if negative && n != 0 {
        buf[0] = b'-';
        pos = 1;
    }
    for k in (0..len).rev() {
        buf[pos] = digits[k];
        pos += 1;
        if k == decimals as usize && k > 0 {
            buf[pos] = b'.';
            pos += 1;
        }
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn gen(v: &Vitals, seed: u64) -> String {
        let item = Item {
            index: seed,
            key: format!("p{seed}"),
            seed,
            fields: Vec::new(),
        };
        let mut out = RowWriter::new();
        v.generate(&item, &mut out, &AtomicBool::new(false))
            .unwrap();
        String::from_utf8(out.take().0).unwrap()
    }

    fn err(json: &str) -> String {
        Vitals::new(&params(json)).unwrap_err().0
    }

    /// FNV-1a, 64 bits: a dependency-free fingerprint for pinning output.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    #[test]
    fn defaults() {
        let v = Vitals::new(&Map::new()).unwrap();
        assert_eq!(v, Vitals::default());
        assert_eq!(v.rows_per_item(), 47);
    }

    #[test]
    fn rows_read_as_the_declared_types() {
        let v = Vitals::new(&params(r#"{"hours": 6, "episode_rate": 20}"#)).unwrap();
        let types = v.column_types();
        assert_eq!(types.len(), v.columns().len());
        for seed in 0..20 {
            let rows = gen(&v, seed);
            crate::run::types::check_rows(&v.columns(), &types, rows.as_bytes(), true).unwrap();
        }
    }

    #[test]
    fn columns_are_as_documented() {
        let cols = Vitals::default().columns();
        assert_eq!(cols.len(), 24);
        assert_eq!(
            cols.join(","),
            "patient,window_start,window_end,\
             hr_mean,hr_std,hr_min,hr_max,hr_slope,\
             spo2_mean,spo2_std,spo2_min,spo2_max,spo2_slope,\
             rr_mean,rr_std,rr_min,rr_max,rr_slope,\
             sbp_mean,sbp_std,sbp_min,sbp_max,sbp_slope,label"
        );
    }

    #[test]
    fn deterministic_per_seed() {
        let v = Vitals::default();
        assert_eq!(gen(&v, 7), gen(&v, 7));
        let a = gen(&v, 7).replace("p7,", "");
        let b = gen(&v, 8).replace("p8,", "");
        assert_ne!(a, b);
    }

    #[test]
    fn row_and_column_counts() {
        for (hours, window, step) in [
            (24, 60, 30),
            (5, 45, 7),
            (1, 60, 1),
            (2, 1, 1),
            (3, 180, 500),
        ] {
            let v = Vitals::new(&params(&format!(
                r#"{{"hours": {hours}, "window": {window}, "step": {step}}}"#
            )))
            .unwrap();
            let text = gen(&v, 3);
            let expected = (hours * 60 - window) / step + 1;
            assert_eq!(
                text.lines().count() as u64,
                expected,
                "{hours} {window} {step}"
            );
            assert_eq!(v.rows_per_item(), expected);
            let ncols = v.columns().len();
            for (k, line) in text.lines().enumerate() {
                let f: Vec<&str> = line.split(',').collect();
                assert_eq!(f.len(), ncols, "{line}");
                assert_eq!(f[1].parse::<u64>().unwrap(), k as u64 * step);
                assert_eq!(f[2].parse::<u64>().unwrap(), k as u64 * step + window);
            }
        }
    }

    #[test]
    fn values_are_physiological_and_labels_mixed() {
        let v = Vitals::default();
        let (mut ones, mut zeros) = (0, 0);
        for seed in 0..200 {
            for line in gen(&v, seed).lines() {
                let f: Vec<&str> = line.split(',').collect();
                for (i, vital) in VITALS.iter().enumerate() {
                    let num = |j: usize| -> f64 { f[3 + 5 * i + j].parse().unwrap() };
                    let (mean, std, min, max) = (num(0), num(1), num(2), num(3));
                    assert!(
                        vital.lo <= min && min <= mean && mean <= max && max <= vital.hi,
                        "{line}"
                    );
                    assert!(std >= 0.0 && std <= (max - min) / 2.0 + 0.01, "{line}");
                    assert!(num(4).abs() <= max - min + 1e-4, "{line}");
                    for j in 0..5 {
                        assert!(
                            !f[3 + 5 * i + j].starts_with("-0.00") || num(j) != 0.0,
                            "{line}"
                        );
                    }
                }
                match f[23] {
                    "1" => ones += 1,
                    "0" => zeros += 1,
                    other => panic!("label {other}"),
                }
            }
        }
        assert!(ones > 0 && zeros > 0);
        // About 1 - exp(-2/24) = 8% with the defaults.
        let frac = ones as f64 / (ones + zeros) as f64;
        assert!((0.04..0.14).contains(&frac), "positive fraction {frac}");
    }

    #[test]
    fn no_episodes_means_no_positive_labels() {
        let v = Vitals::new(&params(r#"{"episode_rate": 0}"#)).unwrap();
        for seed in 0..20 {
            assert!(gen(&v, seed).lines().all(|l| l.ends_with(",0")));
        }
    }

    #[test]
    fn episodes_shift_the_vitals() {
        // Mean HR and SBP over many patients, without and with frequent episodes.
        let avg = |rate: f64, col: usize| {
            let v = Vitals::new(&params(&format!(r#"{{"episode_rate": {rate}}}"#))).unwrap();
            let mut s = 0.0;
            let mut n = 0.0;
            for seed in 0..50 {
                for line in gen(&v, seed).lines() {
                    s += line.split(',').nth(col).unwrap().parse::<f64>().unwrap();
                    n += 1.0;
                }
            }
            s / n
        };
        assert!(avg(6.0, 3) > avg(0.0, 3) + 10.0); // hr_mean up
        assert!(avg(6.0, 8) < avg(0.0, 8) - 1.5); // spo2_mean down
        assert!(avg(6.0, 13) > avg(0.0, 13) + 3.0); // rr_mean up
        assert!(avg(6.0, 18) < avg(0.0, 18) - 10.0); // sbp_mean down
    }

    #[test]
    fn shorter_simulation_is_a_prefix_of_a_longer_one() {
        let short = Vitals::new(&params(r#"{"hours": 12, "horizon": 30}"#)).unwrap();
        let long = Vitals::new(&params(r#"{"hours": 24, "horizon": 30}"#)).unwrap();
        for seed in 0..20 {
            let (a, b) = (gen(&short, seed), gen(&long, seed));
            assert!(b.starts_with(&a), "seed {seed}");
        }
    }

    #[test]
    fn fixed_formatting_matches_std_rounding() {
        let std_fmt = |x: f64, d: u32| {
            let s = format!("{x:.prec$}", prec = d as usize);
            match s.strip_prefix('-') {
                Some(rest) if rest.bytes().all(|c| c == b'0' || c == b'.') => rest.to_string(),
                _ => s,
            }
        };
        let ours = |x: f64, d: u32| {
            let mut buf = [0u8; 40];
            let len = fixed(x, d, &mut buf).unwrap();
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        let mut r = Rng::new(1);
        let check = |x: f64| {
            if !x.is_finite() {
                return;
            }
            for d in 0..=4 {
                assert_eq!(ours(x, d), std_fmt(x, d), "{x:e} with {d} decimals");
            }
        };
        for _ in 0..200_000 {
            check(r.uniform(-300.0, 300.0));
            check(r.uniform(-1.0, 1.0) * 1e-3);
            // Exact ties (odd multiples of 1/8 at 2 decimals, of 1/32 at 4), and neighbours.
            let tie = (r.uniform(-1e5, 1e5) as i64) as f64 / 32.0;
            check(tie);
            check(f64::from_bits(tie.to_bits() + 1));
            check(f64::from_bits(tie.to_bits().wrapping_sub(1)));
            check(r.uniform(-1e14, 1e14));
        }
        for x in [
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            -2.5,
            0.125,
            0.375,
            5e-324,
            1e-300,
            999_999.995,
        ] {
            check(x);
        }
        assert_eq!(fixed(f64::NAN, 2, &mut [0; 40]), None);
        assert_eq!(fixed(1e15, 2, &mut [0; 40]), None);
    }

    #[test]
    fn no_negative_zero() {
        let mut out = RowWriter::new();
        for x in [-0.0, -0.001, -0.004_999, 0.0, -0.005_01, 1234.5678] {
            write_fixed(&mut out, x, 2);
        }
        write_fixed(&mut out, -0.000_04, 4);
        write_fixed(&mut out, -0.000_06, 4);
        out.end_record();
        assert_eq!(
            out.as_bytes(),
            b"0.00,0.00,0.00,0.00,-0.01,1234.57,0.0000,-0.0001\n"
        );
    }

    #[test]
    fn keys_needing_quotes_are_quoted() {
        let v = Vitals::new(&params(r#"{"hours": 1}"#)).unwrap();
        let item = Item {
            index: 0,
            key: "a,b".into(),
            seed: 1,
            fields: Vec::new(),
        };
        let mut out = RowWriter::new();
        v.generate(&item, &mut out, &AtomicBool::new(false))
            .unwrap();
        assert!(out.as_bytes().starts_with(b"\"a,b\",0,60,"));
    }

    #[test]
    fn output_is_pinned() {
        let v = Vitals::new(&params(
            r#"{"hours": 3, "window": 60, "step": 60, "horizon": 60, "episode_rate": 12}"#,
        ))
        .unwrap();
        assert_eq!(gen(&v, 1), PINNED_SMALL);
        // Default params, patients 1 to 10 (which include episodes and positive labels).
        let default: String = (1..=10).map(|seed| gen(&Vitals::default(), seed)).collect();
        assert!(default.lines().any(|l| l.ends_with(",1")));
        assert_eq!(fnv1a(default.as_bytes()), PINNED_DEFAULT_FNV);
    }

    /// Exact output for seed 1 (key "p1") with small params; it includes an episode.
    const PINNED_SMALL: &str = "\
p1,0,60,64.86,4.93,54.12,74.41,-0.1391,95.46,0.81,93.81,97.41,0.0151,16.19,1.46,13.36,19.15,0.0530,115.47,3.61,109.54,123.47,0.0255,0
p1,60,120,72.09,3.53,66.29,79.62,0.1286,95.60,0.72,93.91,97.18,0.0038,16.85,1.45,14.40,19.94,0.0378,118.90,3.92,111.44,125.21,-0.1883,1
p1,120,180,82.90,6.12,71.03,91.57,0.3185,92.09,1.66,88.39,95.05,-0.0731,21.99,2.71,17.69,27.77,0.1412,107.59,6.48,94.73,117.75,-0.3181,0
";
    /// FNV-1a of the default output for seeds 1 to 10 (keys "p1" to "p10").
    const PINNED_DEFAULT_FNV: u64 = 4_409_293_356_782_381_921;

    #[test]
    fn params_validation() {
        assert_eq!(
            err(r#"{"window": -3}"#),
            "generator.params.window: must be a positive integer (got -3)"
        );
        assert_eq!(
            err(r#"{"hours": 0}"#),
            "generator.params.hours: must be a positive integer (got 0)"
        );
        assert_eq!(
            err(r#"{"step": 1.5}"#),
            "generator.params.step: must be a positive integer (got 1.5)"
        );
        assert_eq!(
            err(r#"{"horizon": "120"}"#),
            "generator.params.horizon: must be a positive integer (got \"120\")"
        );
        assert_eq!(
            err(r#"{"hours": 100000}"#),
            "generator.params.hours: must be at most 8760 (got 100000)"
        );
        assert_eq!(
            err(r#"{"hours": 1, "window": 61}"#),
            "generator.params.window: must be at most hours*60 = 60 minutes (got 61)"
        );
        assert_eq!(
            err(r#"{"episode_rate": -0.5}"#),
            "generator.params.episode_rate: must be a non-negative number (got -0.5)"
        );
        assert_eq!(
            err(r#"{"episode_rate": "often"}"#),
            "generator.params.episode_rate: must be a non-negative number (got \"often\")"
        );
        assert_eq!(
            err(r#"{"episode_rate": 5000}"#),
            "generator.params.episode_rate: must be at most 1440 episodes per 24 h (got 5000)"
        );
        assert_eq!(
            err(r#"{"windows": 30}"#),
            "generator.params.windows: unknown parameter \
             (known: hours, window, step, horizon, episode_rate)"
        );
        let ok = Vitals::new(&params(
            r#"{"hours": 1, "window": 60, "step": 1, "horizon": 1, "episode_rate": 0.0}"#,
        ))
        .unwrap();
        assert_eq!(ok.rows_per_item(), 1);
        assert!(Vitals::new(&params(r#"{"episode_rate": 2}"#)).is_ok());
    }
}
