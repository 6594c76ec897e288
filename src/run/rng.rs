//! A small, self-contained pseudo-random number generator whose output is frozen.
//!
//! Datasets must be reproducible from their seed across versions of this crate, of its
//! dependencies and of the platform, so the generator is implemented here rather than taken from a
//! crate whose streams may change between releases:
//!
//! * [`splitmix64`] is one splitmix64 step as a pure function (add the golden gamma, then the
//!   bijective splitmix64 finaliser) and [`SplitMix64`] the splitmix64 generator built on it;
//! * [`Rng`] is xoshiro256\*\* (Blackman & Vigna), its 256-bit state filled from a `u64` seed by
//!   [`SplitMix64`], as recommended by the authors.
//!
//! The floating-point methods use only IEEE 754 basic operations (`+ - * /` and `sqrt`, which are
//! correctly rounded everywhere) and a logarithm implemented in this module (the classic fdlibm
//! algorithm), never the platform's `libm`, so every value is bit-for-bit identical on every target
//! with IEEE 754 double arithmetic (all mainstream ones).
//!
//! The streams are pinned by unit tests: any change to the output of an existing method is a
//! breaking change to every dataset generated with it. New behaviour must go into new methods.

/// The splitmix64 increment (2^64 divided by the golden ratio, odd).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// One step of splitmix64 from state `x`: adds the golden gamma, then applies the splitmix64
/// finaliser (a bijective mixer in which each input bit affects every output bit):
///
/// ```text
/// z = x + 0x9e3779b97f4a7c15   (wrapping)
/// z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
/// z = (z ^ (z >> 27)) * 0x94d049bb133111eb
/// z ^ (z >> 31)
/// ```
///
/// A bijection of `u64`, useful to derive well-spread values from structured inputs (counters,
/// seeds combined with hashes). `SplitMix64::new(x).next_u64() == splitmix64(x)`.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The splitmix64 generator (Steele, Lea & Flood): a 64-bit counter stepped by the golden gamma,
/// each output being [`splitmix64`] of the counter before the step. Fast and adequate for seeding;
/// [`Rng`] is the better general-purpose generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose outputs are `splitmix64(seed)`, `splitmix64(seed + gamma)`, ... with
    /// gamma = 0x9e3779b97f4a7c15 (wrapping).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.state);
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        out
    }
}

/// xoshiro256\*\*: a fast, small-state generator with a period of 2^256 - 1 and excellent
/// statistical quality, seeded from a `u64` through [`SplitMix64`].
///
/// Not cryptographically secure. Deterministic: the same seed yields the same sequence of calls'
/// results on every platform and in every version of this crate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rng {
    s: [u64; 4],
    /// The second normal deviate of the last polar-method pair, returned by the next `normal()`.
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator seeded from `seed`: its four state words are the first four outputs of
    /// `SplitMix64::new(seed)` (never all zero, since splitmix64 is a bijection of distinct
    /// inputs).
    pub fn new(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        Self {
            s,
            spare_normal: None,
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform value in `[0, 1)`: the top 53 bits of [`next_u64`](Self::next_u64) times 2^-53,
    /// so every multiple of 2^-53 in the interval is equally likely.
    #[inline]
    pub fn f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }

    /// A uniform value in `[lo, hi)` (computed as `lo + (hi - lo) * f64()`; with `lo == hi` it is
    /// `lo`). Consumes one `next_u64`.
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// A standard normal deviate (mean 0, standard deviation 1), by Marsaglia's polar method.
    ///
    /// Each accepted pair of uniforms yields two independent deviates: the first is returned, the
    /// second is kept and returned by the next call (the spare is part of the generator's state,
    /// so the sequence stays deterministic however calls to other methods are interleaved).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.f64() - 1.0;
            let v = 2.0 * self.f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let m = (-2.0 * ln(s) / s).sqrt();
                self.spare_normal = Some(v * m);
                return u * m;
            }
        }
    }

    /// An exponential deviate with the given `rate` (mean `1 / rate`), by inversion:
    /// `-ln(1 - f64()) / rate`. Consumes one `next_u64`; the result is finite and `>= 0` for any
    /// `rate > 0` (`rate` must be positive; otherwise the result is infinite or NaN).
    #[inline]
    pub fn exponential(&mut self, rate: f64) -> f64 {
        debug_assert!(rate > 0.0, "exponential rate must be positive");
        -ln(1.0 - self.f64()) / rate
    }
}

/// Natural logarithm, a port of fdlibm's `__ieee754_log` (error below 1 ulp). Built only from
/// correctly rounded IEEE operations, so it returns identical bits on every platform, unlike
/// `f64::ln`, which defers to the platform's math library.
fn ln(x: f64) -> f64 {
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const TWO54: f64 = f64::from_bits(0x4350_0000_0000_0000);
    const LG1: f64 = f64::from_bits(0x3fe5_5555_5555_5593);
    const LG2: f64 = f64::from_bits(0x3fd9_9999_9997_fa04);
    const LG3: f64 = f64::from_bits(0x3fd2_4924_9422_9359);
    const LG4: f64 = f64::from_bits(0x3fcc_71c5_1d8e_78af);
    const LG5: f64 = f64::from_bits(0x3fc7_4664_96cb_03de);
    const LG6: f64 = f64::from_bits(0x3fc3_9a09_d078_c69f);
    const LG7: f64 = f64::from_bits(0x3fc2_f112_df3e_5244);
    const THIRD: f64 = f64::from_bits(0x3fd5_5555_5555_5555); // nearest to 1/3

    let mut x = x;
    let bits = x.to_bits();
    let mut hx = (bits >> 32) as u32 as i32;
    let lx = bits as u32;
    let mut k: i32 = 0;
    if hx < 0x0010_0000 {
        // Zero, negative or subnormal.
        if ((hx & 0x7fff_ffff) as u32 | lx) == 0 {
            return f64::NEG_INFINITY;
        }
        if hx < 0 {
            return f64::NAN;
        }
        k -= 54;
        x *= TWO54;
        hx = (x.to_bits() >> 32) as u32 as i32;
    }
    if hx >= 0x7ff0_0000 {
        // +inf or NaN.
        return x + x;
    }
    k += (hx >> 20) - 1023;
    hx &= 0x000f_ffff;
    let i = (hx + 0x95f64) & 0x0010_0000;
    // Normalise x to [sqrt(2)/2, sqrt(2)).
    let high = (hx | (i ^ 0x3ff0_0000)) as u32 as u64;
    x = f64::from_bits((high << 32) | (x.to_bits() & 0xffff_ffff));
    k += i >> 20;
    let f = x - 1.0;
    let dk = f64::from(k);
    if (0x000f_ffff & (2 + hx)) < 3 {
        // |f| < 2^-20.
        if f == 0.0 {
            return if k == 0 {
                0.0
            } else {
                dk * LN2_HI + dk * LN2_LO
            };
        }
        let r = f * f * (0.5 - THIRD * f);
        return if k == 0 {
            f - r
        } else {
            dk * LN2_HI - ((r - dk * LN2_LO) - f)
        };
    }
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    let i = (hx - 0x6147a) | (0x6b851 - hx);
    if i > 0 {
        let hfsq = 0.5 * f * f;
        if k == 0 {
            f - (hfsq - s * (hfsq + r))
        } else {
            dk * LN2_HI - ((hfsq - (s * (hfsq + r) + dk * LN2_LO)) - f)
        }
    } else if k == 0 {
        f - s * (f - r)
    } else {
        dk * LN2_HI - ((s * (f - r) - dk * LN2_LO) - f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_mixer_is_pinned() {
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf); // first output of splitmix64 from 0
        assert_eq!(splitmix64(1), PIN_MIX_1);
        assert_eq!(splitmix64(0xdead_beef), PIN_MIX_DEADBEEF);
    }

    #[test]
    fn splitmix64_generator_matches_reference() {
        // Reference values of splitmix64 seeded with 1234567 (from the authors' C code).
        let mut sm = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| sm.next_u64()).collect();
        assert_eq!(got[0], splitmix64(1_234_567));
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn xoshiro_matches_reference() {
        // Reference output of xoshiro256** from the state [1, 2, 3, 4] (the authors' C code).
        let mut r = Rng {
            s: [1, 2, 3, 4],
            spare_normal: None,
        };
        let got: Vec<u64> = (0..10).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                11_520,
                0,
                1_509_978_240,
                1_215_971_899_390_074_240,
                1_216_172_134_540_287_360,
                607_988_272_756_665_600,
                16_172_922_978_634_559_625,
                8_476_171_486_693_032_832,
                10_595_114_339_597_558_777,
                2_904_607_092_377_533_576,
            ]
        );
    }

    #[test]
    fn xoshiro_stream_is_pinned() {
        let mut r = Rng::new(0);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, PIN_XOSHIRO_SEED0);
        let mut r = Rng::new(42);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, PIN_XOSHIRO_SEED42);
    }

    #[test]
    fn float_streams_are_pinned() {
        let mut r = Rng::new(7);
        let bits = |v: f64| v.to_bits();
        assert_eq!(bits(r.f64()), PIN_F64_SEED7);
        assert_eq!(bits(r.uniform(-3.0, 5.0)), PIN_UNIFORM_SEED7);
        assert_eq!(bits(r.normal()), PIN_NORMAL1_SEED7);
        assert_eq!(bits(r.normal()), PIN_NORMAL2_SEED7);
        assert_eq!(bits(r.exponential(2.0)), PIN_EXP_SEED7);
    }

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut a = Rng::new(99);
        let mut b = Rng::new(99);
        let mut c = Rng::new(100);
        let mut differ = false;
        for _ in 0..100 {
            let x = a.next_u64();
            assert_eq!(x, b.next_u64());
            differ |= x != c.next_u64();
        }
        assert!(differ);
    }

    #[test]
    fn f64_and_uniform_stay_in_range() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            let x = r.f64();
            assert!((0.0..1.0).contains(&x));
            let y = r.uniform(10.0, 12.5);
            assert!((10.0..12.5).contains(&y));
        }
        assert_eq!(r.uniform(4.0, 4.0), 4.0);
    }

    fn mean_std(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn normal_statistics() {
        let mut r = Rng::new(2024);
        let xs: Vec<f64> = (0..100_000).map(|_| r.normal()).collect();
        let (mean, std) = mean_std(&xs);
        // Standard error of the mean is ~0.0032; of the std ~0.0022.
        assert!(mean.abs() < 0.015, "mean {mean}");
        assert!((std - 1.0).abs() < 0.015, "std {std}");
        let within_1 = xs.iter().filter(|x| x.abs() < 1.0).count() as f64 / 1e5;
        assert!((within_1 - 0.6827).abs() < 0.01, "P(|z|<1) {within_1}");
        assert!(xs.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn uniform_and_exponential_statistics() {
        let mut r = Rng::new(5);
        let us: Vec<f64> = (0..100_000).map(|_| r.f64()).collect();
        let (mean, std) = mean_std(&us);
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((std - (1.0f64 / 12.0).sqrt()).abs() < 0.005, "std {std}");
        let es: Vec<f64> = (0..100_000).map(|_| r.exponential(4.0)).collect();
        let (mean, std) = mean_std(&es);
        assert!((mean - 0.25).abs() < 0.005, "mean {mean}");
        assert!((std - 0.25).abs() < 0.006, "std {std}");
        assert!(es.iter().all(|&e| e >= 0.0 && e.is_finite()));
    }

    #[test]
    fn ln_is_within_one_ulp_of_std() {
        // The platform logarithm serves only as a reference here.
        let mut r = Rng::new(11);
        let check = |x: f64| {
            let (a, b) = (ln(x), x.ln());
            let diff = (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
            assert!(diff <= 1, "ln({x:e}) = {a:e}, std {b:e}");
        };
        for _ in 0..100_000 {
            check(r.f64());
            check(1.0 - r.f64());
            check(r.uniform(0.5, 2.0));
            let any = f64::from_bits(r.next_u64() >> 1); // positive: normal, subnormal, inf or NaN
            if any.is_finite() {
                check(any);
            }
        }
        for x in [
            1.0,
            2.0,
            0.5,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            1.0 + f64::EPSILON,
        ] {
            check(x);
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        assert!(ln(f64::NAN).is_nan());
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
    }

    // Pinned outputs: computed once with this implementation; a failure here means previously
    // generated datasets would no longer be reproducible.
    const PIN_MIX_1: u64 = 0x910a_2dec_8902_5cc1;
    const PIN_MIX_DEADBEEF: u64 = 0x4adf_b90f_68c9_eb9b;
    const PIN_XOSHIRO_SEED0: [u64; 4] = [
        0x99ec_5f36_cb75_f2b4,
        0xbf6e_1f78_4956_452a,
        0x1a5f_849d_4933_e6e0,
        0x6aa5_94f1_262d_2d2c,
    ];
    const PIN_XOSHIRO_SEED42: [u64; 4] = [
        0x1578_0b2e_0c2e_c716,
        0x6104_d986_6d11_3a7e,
        0xae17_5332_39e4_99a1,
        0xecb8_ad47_03b3_60a1,
    ];
    /// 0.7005764821796896
    const PIN_F64_SEED7: u64 = 0x3fe6_6b1f_5ee9_df2e;
    /// -0.7699901642097258
    const PIN_UNIFORM_SEED7: u64 = 0xbfe8_a3c2_69b0_b7d8;
    /// -0.3039301238656567
    const PIN_NORMAL1_SEED7: u64 = 0xbfd3_7397_5591_6c21;
    /// -1.0989693210013467
    const PIN_NORMAL2_SEED7: u64 = 0xbff1_9560_dad0_2138;
    /// 0.3897531290316306
    const PIN_EXP_SEED7: u64 = 0x3fd8_f1b7_1bad_16e2;
}
