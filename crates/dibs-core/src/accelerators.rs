//! Accelerator names: SkyPilot's canonical list, the aliases folded into it, and the
//! memory rule that tells an 80 GB A100 from a 40 GB one.

/// SkyPilot's canonical accelerator names (`common/accelerators.csv` of the v8 catalog).
#[rustfmt::skip]
pub const CANONICAL_ACCELERATORS: [&str; 59] = [
    "A10", "A100", "A100-80GB", "A100-80GB-SXM", "A10G", "A30", "A40", "A4000", "A6000", "A800", "B200",
    "GH200", "GTX1660S", "Gaudi HL-205", "H100", "H100-MEGA", "H100-NVL", "H100-NVLINK", "H100-SXM",
    "H200", "H200-SXM", "K80", "L4", "L40", "L40S", "M4000", "M60", "MI300X", "P100", "P4", "P4000",
    "RTX3060", "RTX3070", "RTX3080", "RTX3090", "RTX4000-Ada", "RTX4090", "RTX5060", "RTX5090", "RTX6000",
    "RTX6000-Ada", "RTXA4000", "RTXA4500", "RTXA5000", "RTXA6000", "RTXPRO6000S",
    "RTXPRO6000WS", "Radeon MI25", "Radeon Pro V520", "T4", "T4g", "V100", "V100-32GB", "tpu-v2", "tpu-v3",
    "tpu-v4", "tpu-v5litepod", "tpu-v5p", "tpu-v6e",
];

/// Other spellings of canonical names, as vendors' tools and other catalogs write them; the
/// left side is compared with separators (`-`, `_`, space) folded and case ignored.
///
/// SkyPilot's own list names one GPU twice (`RTX6000-Ada` for RunPod and Vast,
/// `RTX6000Ada` for PrimeIntellect); dibs keeps the first and folds the second into it, as
/// it does verda's `RTX-6000-Ada` and Azure's bare `MI25` (SkyPilot's `Radeon MI25`).
pub const ACCELERATOR_ALIASES: [(&str, &str); 19] = [
    ("h100-80gb", "H100"),
    ("h100-80gb-hbm3", "H100"),
    ("h100-pcie", "H100"),
    ("h100-80gb-pcie", "H100"),
    ("h200-141gb", "H200"),
    ("h200-141gb-hbm3e", "H200"),
    ("a100-40gb", "A100"),
    ("a100-sxm4-40gb", "A100"),
    ("a100-pcie-40gb", "A100"),
    ("a100-80gb-pcie", "A100-80GB"),
    ("a100-sxm4-80gb", "A100-80GB"),
    ("v100-16gb", "V100"),
    ("v100-sxm2-16gb", "V100"),
    ("v100-sxm2-32gb", "V100-32GB"),
    ("rtx6000ada", "RTX6000-Ada"),
    ("rtx-6000-ada", "RTX6000-Ada"),
    ("rtx6000-ada-generation", "RTX6000-Ada"),
    ("mi25", "Radeon MI25"),
    ("rtx-pro-6000", "RTXPRO6000WS"),
];

/// Vendor and brand words that precede a model name (`NVIDIA H100`, `AMD Instinct MI300X`,
/// `Tesla T4`) and are dropped before matching.
const ACCELERATOR_VENDOR_PREFIXES: [&str; 4] = ["nvidia", "amd", "tesla", "instinct"];

/// The canonical spelling of an accelerator name.
///
/// Matching is case-insensitive and treats `-`, `_` and spaces alike; vendor words are dropped
/// (`NVIDIA H100` -> `H100`) and a few aliases are folded in (`h100-80gb` -> `H100`,
/// `a100_80gb` -> `A100-80GB`). SkyPilot's canonical names are kept as they are, even
/// variants such as `A100-80GB-SXM`. An unknown name comes back trimmed but otherwise unchanged.
/// This runs for every catalog row, so it allocates nothing but the returned string.
pub fn canonical_accelerator(name: &str) -> String {
    let name = name.trim();
    if let Some(canonical) =
        CANONICAL_ACCELERATORS.iter().find(|canonical| canonical.eq_ignore_ascii_case(name))
    {
        return (*canonical).to_owned();
    }
    let model = strip_vendor_prefixes(name);
    let canonical =
        CANONICAL_ACCELERATORS.iter().find(|canonical| eq_folded(model, canonical)).or_else(|| {
            ACCELERATOR_ALIASES
                .iter()
                .find(|(alias, _)| eq_folded(model, alias))
                .map(|(_, canonical)| canonical)
        });
    match canonical {
        Some(canonical) => (*canonical).to_owned(),
        None => name.to_owned(),
    }
}

fn strip_vendor_prefixes(mut name: &str) -> &str {
    'again: loop {
        for prefix in ACCELERATOR_VENDOR_PREFIXES {
            let bytes = name.as_bytes();
            let matches = bytes.len() > prefix.len() + 1
                && bytes[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                && matches!(bytes[prefix.len()], b' ' | b'-' | b'_');
            if matches {
                // The byte at `prefix.len()` is ASCII, so both slice points are char boundaries.
                name = name[prefix.len() + 1..].trim_start();
                continue 'again;
            }
        }
        return name;
    }
}

/// Equal ignoring ASCII case, with `-`, `_` and space treated as the same separator.
fn eq_folded(left: &str, right: &str) -> bool {
    fn fold(byte: u8) -> u8 {
        match byte {
            b'_' | b' ' => b'-',
            other => other.to_ascii_lowercase(),
        }
    }
    left.len() == right.len() && left.bytes().zip(right.bytes()).all(|(l, r)| fold(l) == fold(r))
}

/// Some catalogs name an accelerator by its model alone and give its memory in `GpuInfo`
/// (vast sells 40 GB and 80 GB A100s under one name). This returns the canonical variant
/// for the memory per GPU, in MiB: `A100` with 80 GB is `A100-80GB`, `V100` with 32 GB is
/// `V100-32GB`. Anything else comes back unchanged.
pub fn variant_for_memory(accelerator: &str, memory_per_gpu_mib: Option<f64>) -> &str {
    const LARGE_A100_MIB: f64 = 70.0 * 1024.0;
    const LARGE_V100_MIB: f64 = 30.0 * 1024.0;
    match (accelerator, memory_per_gpu_mib) {
        ("A100", Some(mib)) if mib >= LARGE_A100_MIB => "A100-80GB",
        ("V100", Some(mib)) if mib >= LARGE_V100_MIB => "V100-32GB",
        _ => accelerator,
    }
}

/// The memory per GPU a SkyPilot `GpuInfo` cell states, in MiB: `TotalGpuMemoryInMiB`
/// divided by the GPU count when it is there (vast and hyperbolic write a total), else the
/// first `SizeInMiB` (GCP writes it per GPU). The cell is a Python literal, not JSON, so the
/// two numbers are found by name.
pub fn gpu_memory_mib(gpu_info: &str, count: u32) -> Option<f64> {
    fn number_after(text: &str, key: &str) -> Option<f64> {
        let start = text.find(key)? + key.len();
        let rest = text[start..].trim_start_matches(['\'', '"', ':', ' ']);
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        rest[..end].parse().ok().filter(|v: &f64| v.is_finite() && *v > 0.0)
    }
    match number_after(gpu_info, "TotalGpuMemoryInMiB") {
        Some(total) => Some(total / f64::from(count.max(1))),
        None => number_after(gpu_info, "SizeInMiB"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The tenth shared file, SkyPilot's `accelerators.csv`, is the list the
    /// embedded canonical names were written from: every name in it is canonical as it
    /// stands or one of the aliases folded into a canonical name, and the embedded list has
    /// nothing else.
    #[test]
    fn skypilot_accelerator_list_matches_the_embedded_canonical_names() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/catalogs/skypilot-v8/accelerators.csv"
        ));
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipping: {} not found", path.display());
            return;
        };
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut names = 0;
        for record in reader.records() {
            let record = record.expect("accelerators.csv is well-formed CSV");
            let name = &record[0];
            names += 1;
            let alias = ACCELERATOR_ALIASES.iter().find(|(alias, _)| eq_folded(alias, name));
            match alias {
                Some((_, canonical)) => assert_eq!(canonical_accelerator(name), *canonical),
                None => {
                    assert_eq!(canonical_accelerator(name), name, "{name} should already be canonical");
                    assert!(CANONICAL_ACCELERATORS.contains(&name), "{name} is missing");
                }
            }
        }
        assert_eq!(names, CANONICAL_ACCELERATORS.len() + 1, "one SkyPilot name is an alias");
    }

    #[test]
    fn memory_tells_the_variants_apart() {
        let vast_80 = "{'Gpus': [{'Name': 'A100', 'Count': 2, 'MemoryInfo': {'SizeInMiB': 163840}}], 'TotalGpuMemoryInMiB': 163840}";
        let vast_40 = "{'Gpus': [{'Name': 'A100', 'Count': 2, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 81920}";
        let gcp = "{'Gpus': [{'MemoryInfo': {'SizeInMiB': 81920}}]}";
        assert_eq!(gpu_memory_mib(vast_80, 2), Some(81920.0));
        assert_eq!(variant_for_memory("A100", gpu_memory_mib(vast_80, 2)), "A100-80GB");
        assert_eq!(variant_for_memory("A100", gpu_memory_mib(vast_40, 2)), "A100");
        assert_eq!(gpu_memory_mib(gcp, 8), Some(81920.0));
        assert_eq!(variant_for_memory("V100", Some(32768.0)), "V100-32GB");
        assert_eq!(variant_for_memory("H100", Some(81920.0)), "H100");
        assert_eq!(gpu_memory_mib("", 1), None);
        assert_eq!(gpu_memory_mib("{'SizeInMiB': 'x'}", 1), None);
    }

    #[test]
    fn canonical_accelerator_names() {
        let cases = [
            ("H100", "H100"),
            ("  h100 ", "H100"),
            ("h100-80gb", "H100"),
            ("NVIDIA H100", "H100"),
            ("NVIDIA-H100-80GB-HBM3", "H100"),
            ("NVIDIA H100 80GB HBM3", "H100"),
            ("a100_80gb", "A100-80GB"),
            ("A100-80GB-SXM", "A100-80GB-SXM"),
            ("a100-80gb-sxm", "A100-80GB-SXM"),
            ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
            ("AMD Instinct MI300X", "MI300X"),
            ("mi300x", "MI300X"),
            ("Tesla T4", "T4"),
            ("t4g", "T4g"),
            ("radeon_mi25", "Radeon MI25"),
            ("rtx6000ada", "RTX6000-Ada"),
            ("RTX-6000-Ada", "RTX6000-Ada"),
            ("MI25", "Radeon MI25"),
            ("RTX6000 Ada", "RTX6000-Ada"),
            ("TPU-V4", "tpu-v4"),
            ("B300", "B300"),
            (" Some New GPU ", "Some New GPU"),
            ("NVIDIA", "NVIDIA"),
            ("nvidia-", "nvidia-"),
            ("NVIDIA Ünknown", "NVIDIA Ünknown"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical_accelerator(input), expected, "canonical_accelerator({input:?})");
        }
    }

    #[test]
    fn canonical_names_are_distinct_after_folding_and_aliases_point_at_them() {
        for (i, left) in CANONICAL_ACCELERATORS.iter().enumerate() {
            assert_eq!(canonical_accelerator(left), *left);
            for right in &CANONICAL_ACCELERATORS[i + 1..] {
                assert!(!eq_folded(left, right), "{left} and {right} fold to the same name");
            }
        }
        for (alias, canonical) in ACCELERATOR_ALIASES {
            assert!(CANONICAL_ACCELERATORS.contains(&canonical), "{alias} -> {canonical}");
            assert!(
                !CANONICAL_ACCELERATORS.iter().any(|name| eq_folded(alias, name)),
                "{alias} is canonical"
            );
        }
    }
}
