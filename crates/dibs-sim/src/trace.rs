//! Demand for a simulation: capacity requests derived from real traces.
//!
//! Two kinds of trace are read, both CSV with a header row:
//!
//! * **Training traces** (`id,submit_time_s,gpus,duration_s[,node_split]`, the
//!   Philly format). Each row is one job. `node_split` and any other column is
//!   ignored: the block size of a request comes from [`TraceOptions::block`].
//! * **LLM request traces** (`timestamp_s,context_tokens,generated_tokens[,...]`,
//!   the Azure LLM inference format). Each row is one API call.
//!
//! A buyer does not ask a cloud for one job's GPUs; it asks for capacity that
//! a group of jobs will share. The grouping rules below say how jobs become
//! requests. They are deliberately simple so that a report can state them in
//! one sentence ([`Demand::jobs_per_request_note`] does), at the cost of
//! over-provisioning: a request holds its peak for its whole duration.
//!
//! # Training traces: grouping rule
//!
//! All trace times and durations are first multiplied by
//! [`TraceOptions::time_scale`] and rounded to whole seconds; trace time 0
//! maps to [`TraceOptions::start`].
//!
//! With `group_hours > 0`, jobs are grouped by submit time into consecutive
//! windows of `group_hours` (window `k` covers `[k·w, (k+1)·w)` after
//! scaling). Each window that has jobs becomes one `training` request `train-<k>`:
//!
//! * GPUs: the peak number of GPUs running at once among that window's jobs
//!   (a job runs from its submit time for its duration; intervals are
//!   half-open, so a job ending when another starts does not overlap it),
//!   times [`TraceOptions::gpu_scale`], rounded **up** to a multiple of
//!   [`TraceOptions::block`], at least one block;
//! * earliest start (`submit`): the window start;
//! * duration: `ceil((latest end among the window's jobs - window start) / 3600)`
//!   hours, at least 1, at most [`MAX_DURATION_HOURS`].
//!
//! With `group_hours = 0` every job is its own request `job-<id>`: GPUs =
//! `ceil(job GPUs × gpu_scale)`; when that is at most one block the request is
//! one block of exactly that size (a 1-GPU job is a 1-GPU request with block
//! 1), otherwise it is rounded up to a multiple of `block`. The block always
//! divides the GPU count.
//!
//! # LLM traces: throughput model
//!
//! A call with `c` context tokens and `g` generated tokens costs `c + g`
//! tokens of GPU work; prefill and decode are not told apart, which is the
//! model's main simplification (decode tokens cost more in reality: choose
//! [`TraceOptions::tokens_per_gpu_second`] as a blended rate). Calls are put
//! into one-minute buckets by their (scaled) timestamp; a bucket needs
//! `ceil(tokens in the bucket / 60 / tokens_per_gpu_second)` GPUs. Buckets are
//! grouped into windows of `group_hours` (rounded to whole minutes, at least
//! one bucket); each window with calls becomes one `inference` request
//! `infer-<k>` submitted at the window start, for the window's length in hours
//! (rounded up, at least 1), with GPUs = the largest bucket need in the window
//! × `gpu_scale`, rounded up to a multiple of `block`, at least one block.
//!
//! `time_scale` stretches arrival times, so it spreads the same tokens over a
//! longer horizon and lowers the per-minute load; to replay a longer horizon
//! at the same load, multiply `gpu_scale` by the same factor.
//!
//! # Bad input
//!
//! A value that cannot be read (`"x"` as a GPU count) is an error that names
//! the file, the line and the column. A value that can be read but is
//! impossible (zero or negative GPUs, a duration that is not positive, a
//! negative time or token count) skips the row and is counted in
//! [`Demand::rows_skipped`].

use std::collections::BTreeMap;
use std::path::Path;

use dibs_core::types::{GpuCount, Timestamp, WorkloadClass};

use crate::csv_input::{CsvError, Table};

/// A trace longer than this is refused rather than read.
pub const MAX_ROWS: usize = 10_000_000;

/// A trace file larger than this is refused before it is read.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// No request lasts longer than this (a leap year); longer jobs are cut.
pub const MAX_DURATION_HOURS: u32 = 24 * 366;

/// The default LLM throughput, tokens (context plus generated) per GPU-second.
///
/// A blended figure for a 70B-class model served on H100s with batching; it
/// is a flag, not a fact: state the value you used in any report.
pub const DEFAULT_TOKENS_PER_GPU_SECOND: f64 = 2_000.0;

/// Seconds in one LLM demand bucket.
const BUCKET_SECONDS: i64 = 60;

/// One capacity request derived from a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandRequest {
    pub id: String,
    /// The earliest start of the capacity; also when the request is submitted.
    pub submit: Timestamp,
    /// GPUs requested: a positive multiple of `block`.
    pub gpus: u32,
    /// GPUs that must sit together.
    pub block: u32,
    pub duration_hours: u32,
    pub workload: WorkloadClass,
}

/// The demand read from one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Sorted by (submit, id).
    pub requests: Vec<DemandRequest>,
    /// The file name or label the trace was read from.
    pub source: String,
    /// Data rows read (the header excluded).
    pub rows_read: usize,
    /// Rows with impossible values, left out of the demand.
    pub rows_skipped: usize,
    /// The grouping rule, in words, with the numbers used.
    pub jobs_per_request_note: String,
}

/// How a trace becomes demand.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    /// Trace time 0 maps here.
    pub start: Timestamp,
    /// Window length for grouping, in hours after `time_scale`; 0 means one
    /// request per job (training) or per one-minute bucket (LLM).
    pub group_hours: f64,
    /// Multiplies GPUs; above 1 replays the trace as a larger buyer.
    pub gpu_scale: f64,
    /// Multiplies trace times and durations: a longer horizon.
    pub time_scale: f64,
    /// GPUs per block (8 per node by default).
    pub block: u32,
    /// LLM throughput model: tokens per GPU-second.
    pub tokens_per_gpu_second: f64,
    /// Keep only the earliest requests, after sorting.
    pub max_requests: Option<usize>,
}

impl TraceOptions {
    /// One-hour windows, no scaling, 8-GPU blocks, the default throughput.
    pub fn new(start: Timestamp) -> Self {
        Self {
            start,
            group_hours: 1.0,
            gpu_scale: 1.0,
            time_scale: 1.0,
            block: 8,
            tokens_per_gpu_second: DEFAULT_TOKENS_PER_GPU_SECOND,
            max_requests: None,
        }
    }

    fn check(&self) -> Result<(), TraceError> {
        let bad = |message: String| Err(TraceError::Options(message));
        if !(self.group_hours.is_finite()
            && (0.0..=f64::from(MAX_DURATION_HOURS)).contains(&self.group_hours))
        {
            return bad(format!(
                "group_hours {} must be between 0 and {MAX_DURATION_HOURS}",
                self.group_hours
            ));
        }
        if !(self.gpu_scale.is_finite() && self.gpu_scale > 0.0 && self.gpu_scale <= 1e6) {
            return bad(format!("gpu_scale {} must be positive and at most 1e6", self.gpu_scale));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0 && self.time_scale <= 1e6) {
            return bad(format!("time_scale {} must be positive and at most 1e6", self.time_scale));
        }
        if self.block == 0 || self.block > GpuCount::MAX {
            return bad(format!("block {} must be between 1 and {}", self.block, GpuCount::MAX));
        }
        if !(self.tokens_per_gpu_second.is_finite() && self.tokens_per_gpu_second > 0.0) {
            return bad(format!("tokens_per_gpu_second {} must be positive", self.tokens_per_gpu_second));
        }
        Ok(())
    }
}

/// A trace could not be turned into demand. Messages name the file, and the
/// line and column at fault when there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("{file}: {message}")]
    TooLarge { file: String, message: String },
    #[error(
        "{file}: header {header:?} is neither a training trace (id,submit_time_s,gpus,duration_s) \
         nor an LLM trace (timestamp_s,context_tokens,generated_tokens)"
    )]
    UnknownKind { file: String, header: String },
    #[error("trace options: {0}")]
    Options(String),
}

fn parse_integer(file: &str, line: u64, column: &'static str, value: &str) -> Result<i64, CsvError> {
    value.parse::<i64>().map_err(|_| CsvError::bad_value(file, line, column, value, "a whole number"))
}

fn parse_number(file: &str, line: u64, column: &'static str, value: &str) -> Result<f64, CsvError> {
    match value.parse::<f64>() {
        Ok(number) if number.is_finite() => Ok(number),
        _ => Err(CsvError::bad_value(file, line, column, value, "a finite number")),
    }
}

/// Scaled trace seconds, rounded; saturates instead of overflowing.
fn scaled_seconds(seconds: f64, time_scale: f64) -> i64 {
    (seconds * time_scale).round() as i64
}

/// `ceil(gpus × scale)` rounded up to a multiple of `block`, at least one block.
fn round_to_blocks(file: &str, what: &str, gpus: u64, scale: f64, block: u32) -> Result<u32, TraceError> {
    let scaled = (gpus as f64 * scale).ceil().max(1.0);
    let blocks = (scaled / f64::from(block)).ceil();
    let total = blocks * f64::from(block);
    if total > f64::from(GpuCount::MAX) {
        return Err(TraceError::TooLarge {
            file: file.to_owned(),
            message: format!(
                "{what} needs {total} GPUs, more than {}; lower gpu_scale or group_hours",
                GpuCount::MAX
            ),
        });
    }
    Ok(total as u32)
}

fn hours_ceil(seconds: i64) -> u32 {
    let hours = (seconds.max(0) as f64 / Timestamp::HOUR as f64).ceil();
    hours.clamp(1.0, f64::from(MAX_DURATION_HOURS)) as u32
}

fn finish(
    source: &str,
    mut requests: Vec<DemandRequest>,
    rows_read: usize,
    rows_skipped: usize,
    rule: String,
    options: &TraceOptions,
) -> Demand {
    requests.sort_by(|a, b| (a.submit, &a.id).cmp(&(b.submit, &b.id)));
    let total = requests.len();
    if let Some(max) = options.max_requests {
        requests.truncate(max);
    }
    let used = rows_read - rows_skipped;
    let per_request = if total == 0 { 0.0 } else { used as f64 / total as f64 };
    let mut note = format!(
        "{used} of {rows_read} rows used ({rows_skipped} skipped as impossible); {rule}; \
         {total} requests, {per_request:.1} rows per request on average"
    );
    if requests.len() < total {
        note.push_str(&format!("; only the earliest {} requests kept (max_requests)", requests.len()));
    }
    Demand { requests, source: source.to_owned(), rows_read, rows_skipped, jobs_per_request_note: note }
}

/// One training job after scaling: `[start, end)` in seconds since trace time 0.
struct Job {
    id: String,
    start: i64,
    end: i64,
    gpus: u32,
}

/// The largest number of GPUs in use at once among `jobs`.
fn peak_concurrent_gpus(jobs: &[Job]) -> u64 {
    // Ends sort before starts at the same instant: intervals are half-open.
    let mut events: Vec<(i64, i64)> = Vec::with_capacity(jobs.len() * 2);
    for job in jobs {
        events.push((job.start, i64::from(job.gpus)));
        events.push((job.end, -i64::from(job.gpus)));
    }
    events.sort_unstable();
    let (mut running, mut peak) = (0_i64, 0_i64);
    for (_, delta) in events {
        running += delta;
        peak = peak.max(running);
    }
    peak as u64
}

/// Reads a training trace (`id,submit_time_s,gpus,duration_s[,node_split]`).
pub fn read_training_trace(source: &str, text: &str, options: &TraceOptions) -> Result<Demand, TraceError> {
    options.check()?;
    const COLUMNS: [&str; 4] = ["id", "submit_time_s", "gpus", "duration_s"];
    let mut table = Table::open(source, text, COLUMNS, MAX_ROWS)?;
    let mut jobs = Vec::new();
    let mut rows_skipped = 0;
    let rows_read = table.for_each(|line, fields| {
        let submit = parse_number(source, line, "submit_time_s", fields[1])?;
        let gpus = parse_integer(source, line, "gpus", fields[2])?;
        let duration = parse_number(source, line, "duration_s", fields[3])?;
        if submit < 0.0 || gpus <= 0 || gpus > i64::from(GpuCount::MAX) || duration <= 0.0 {
            rows_skipped += 1;
            return Ok::<_, TraceError>(());
        }
        let start = scaled_seconds(submit, options.time_scale);
        let end = scaled_seconds(submit + duration, options.time_scale).max(start.saturating_add(1));
        jobs.push(Job { id: fields[0].to_owned(), start, end, gpus: gpus as u32 });
        Ok(())
    })?;

    let mut requests = Vec::new();
    let rule;
    if options.group_hours == 0.0 {
        rule = format!(
            "one training request per job, GPUs = job GPUs x {} rounded up to {}-GPU blocks \
             (a job of at most one block is one block of its own size), times x {}",
            options.gpu_scale, options.block, options.time_scale
        );
        for job in jobs {
            let scaled = round_to_blocks(
                source,
                &format!("job {}", job.id),
                u64::from(job.gpus),
                options.gpu_scale,
                1,
            )?;
            let block = options.block.min(scaled);
            let gpus = round_to_blocks(source, &format!("job {}", job.id), u64::from(scaled), 1.0, block)?;
            requests.push(DemandRequest {
                id: format!("job-{}", job.id),
                submit: options.start.plus_seconds(job.start),
                gpus,
                block,
                duration_hours: hours_ceil(job.end - job.start),
                workload: WorkloadClass::Training,
            });
        }
    } else {
        let window_seconds = options.group_hours * Timestamp::HOUR as f64;
        rule = format!(
            "jobs grouped by submit time into {}-hour windows, one training request per window with jobs, \
             GPUs = peak concurrent GPUs of the window's jobs x {} rounded up to {}-GPU blocks, \
             from the window start until its last job ends, times x {}",
            options.group_hours, options.gpu_scale, options.block, options.time_scale
        );
        let mut windows: BTreeMap<i64, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            let window = (job.start as f64 / window_seconds).floor() as i64;
            windows.entry(window).or_default().push(job);
        }
        for (window, jobs) in windows {
            let window_start = (window as f64 * window_seconds).round() as i64;
            let latest_end = jobs.iter().map(|job| job.end).max().unwrap_or(window_start);
            let what = format!("window {window}");
            let gpus = round_to_blocks(
                source,
                &what,
                peak_concurrent_gpus(&jobs),
                options.gpu_scale,
                options.block,
            )?;
            requests.push(DemandRequest {
                id: format!("train-{window}"),
                submit: options.start.plus_seconds(window_start),
                gpus,
                block: options.block,
                duration_hours: hours_ceil(latest_end - window_start),
                workload: WorkloadClass::Training,
            });
        }
    }
    Ok(finish(source, requests, rows_read, rows_skipped, rule, options))
}

/// Reads an LLM request trace (`timestamp_s,context_tokens,generated_tokens[,...]`).
pub fn read_llm_trace(source: &str, text: &str, options: &TraceOptions) -> Result<Demand, TraceError> {
    options.check()?;
    const COLUMNS: [&str; 3] = ["timestamp_s", "context_tokens", "generated_tokens"];
    let mut table = Table::open(source, text, COLUMNS, MAX_ROWS)?;
    let mut tokens_per_bucket: BTreeMap<i64, u64> = BTreeMap::new();
    let mut rows_skipped = 0;
    let rows_read = table.for_each(|line, fields| {
        let timestamp = parse_number(source, line, "timestamp_s", fields[0])?;
        let context = parse_integer(source, line, "context_tokens", fields[1])?;
        let generated = parse_integer(source, line, "generated_tokens", fields[2])?;
        if timestamp < 0.0 || context < 0 || generated < 0 {
            rows_skipped += 1;
            return Ok::<_, TraceError>(());
        }
        let bucket = (timestamp * options.time_scale / BUCKET_SECONDS as f64).floor() as i64;
        let tokens = tokens_per_bucket.entry(bucket).or_default();
        *tokens = tokens.saturating_add(context as u64).saturating_add(generated as u64);
        Ok(())
    })?;

    let buckets_per_window = ((options.group_hours * 60.0).round() as i64).max(1);
    let window_seconds = buckets_per_window * BUCKET_SECONDS;
    let mut windows: BTreeMap<i64, u64> = BTreeMap::new();
    for (bucket, tokens) in tokens_per_bucket {
        let need = (tokens as f64 / BUCKET_SECONDS as f64 / options.tokens_per_gpu_second).ceil() as u64;
        let peak = windows.entry(bucket.div_euclid(buckets_per_window)).or_default();
        *peak = (*peak).max(need);
    }
    let mut requests = Vec::with_capacity(windows.len());
    for (window, need) in windows {
        let what = format!("window {window}");
        requests.push(DemandRequest {
            id: format!("infer-{window}"),
            submit: options.start.plus_seconds(window.saturating_mul(window_seconds)),
            gpus: round_to_blocks(source, &what, need, options.gpu_scale, options.block)?,
            block: options.block,
            duration_hours: hours_ceil(window_seconds),
            workload: WorkloadClass::Inference,
        });
    }
    let rule = format!(
        "calls cost context + generated tokens at {} tokens per GPU-second; one-minute buckets need \
         ceil(tokens / 60 / {}) GPUs; one inference request per {}-minute window with calls, \
         GPUs = the window's largest bucket need x {} rounded up to {}-GPU blocks, times x {}",
        options.tokens_per_gpu_second,
        options.tokens_per_gpu_second,
        buckets_per_window,
        options.gpu_scale,
        options.block,
        options.time_scale
    );
    Ok(finish(source, requests, rows_read, rows_skipped, rule, options))
}

/// Reads a trace file, telling its kind by the header: `submit_time_s` makes
/// it a training trace, `timestamp_s` an LLM trace. Errors name the file by
/// its file name.
pub fn read_trace_file(path: &Path, options: &TraceOptions) -> Result<Demand, TraceError> {
    let file =
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let read_error = |e: std::io::Error| CsvError::Read { file: file.clone(), message: e.to_string() };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_FILE_BYTES {
        return Err(TraceError::TooLarge {
            file,
            message: format!("{size} bytes, more than the {MAX_FILE_BYTES} a trace may have"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let header = text.lines().next().unwrap_or("").trim();
    let has = |name: &str| header.split(',').any(|column| column.trim() == name);
    if has("submit_time_s") {
        read_training_trace(&file, &text, options)
    } else if has("timestamp_s") {
        read_llm_trace(&file, &text, options)
    } else {
        Err(TraceError::UnknownKind { file, header: header.chars().take(200).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(group_hours: f64) -> TraceOptions {
        TraceOptions { group_hours, ..TraceOptions::new(Timestamp::from_unix(1_000_000)) }
    }

    /// Renders requests one a line: `id +hours-from-start gpus/block hours class`.
    fn render(demand: &Demand, start: Timestamp) -> String {
        demand
            .requests
            .iter()
            .map(|r| {
                format!(
                    "{} +{}h {}/{} {}h {}",
                    r.id,
                    r.submit.hours_since(start),
                    r.gpus,
                    r.block,
                    r.duration_hours,
                    r.workload
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn check_training(csv: &str, options: &TraceOptions, expected: &str) {
        let demand = read_training_trace("t.csv", csv, options).unwrap();
        assert_eq!(render(&demand, options.start), expected.trim(), "note: {}", demand.jobs_per_request_note);
    }

    fn check_llm(csv: &str, options: &TraceOptions, expected: &str) {
        let demand = read_llm_trace("l.csv", csv, options).unwrap();
        assert_eq!(render(&demand, options.start), expected.trim(), "note: {}", demand.jobs_per_request_note);
    }

    const JOBS: &str = "id,submit_time_s,gpus,duration_s,node_split
a,0,4,7200,1
b,600,4,600,1
c,1200,4,3600,1
d,3600,1,60,1
e,9000,16,100,2
";

    #[test]
    fn a_window_asks_for_its_peak_concurrency_rounded_up_to_blocks() {
        // Window 0 has a, b, c: a+b overlap on [600,1200) = 8, b ends at 1200
        // as c starts (half-open), so a+c = 8 is the peak, not 12. Latest end
        // 7200 s = 2 h. Window 1 has d alone: 1 GPU rounds up to one 8-GPU block.
        check_training(
            JOBS,
            &options(1.0),
            "
train-0 +0h 8/8 2h training
train-1 +1h 8/8 1h training
train-2 +2h 16/8 1h training",
        );
    }

    #[test]
    fn one_request_per_job_keeps_small_jobs_small() {
        check_training(
            "id,submit_time_s,gpus,duration_s\nx,0,1,10\ny,0,12,3601\nz,0,8,7200\n",
            &options(0.0),
            "
job-x +0h 1/1 1h training
job-y +0h 16/8 2h training
job-z +0h 8/8 2h training",
        );
    }

    #[test]
    fn scales_multiply_gpus_and_stretch_time() {
        let scaled = TraceOptions { gpu_scale: 3.0, time_scale: 2.0, ..options(2.0) };
        // Times double: a..c in window 0 (peak 8 -> 24), d at 7200 s in window 1
        // (1 -> 3 -> 8), e at 18000 s in window 2 (16 -> 48, ends 3800 s after
        // the window start: 2 h).
        check_training(
            JOBS,
            &scaled,
            "
train-0 +0h 24/8 4h training
train-1 +2h 8/8 1h training
train-2 +4h 48/8 2h training",
        );
    }

    #[test]
    fn impossible_rows_are_skipped_and_counted() {
        let csv = "id,submit_time_s,gpus,duration_s\na,0,0,10\nb,0,2,-5\nc,-1,2,5\nd,0,2,0\ne,0,2,10\n";
        let demand = read_training_trace("t.csv", csv, &options(0.0)).unwrap();
        assert_eq!((demand.rows_read, demand.rows_skipped, demand.requests.len()), (5, 4, 1));
        assert!(
            demand.jobs_per_request_note.contains("1 of 5 rows used"),
            "{}",
            demand.jobs_per_request_note
        );
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let csv = "id,submit_time_s,gpus,duration_s\na,0,1,10\nb,0,x,10\n";
        let error = read_training_trace("philly.csv", csv, &options(1.0)).unwrap_err();
        assert_eq!(error.to_string(), r#"philly.csv:3: gpus "x" is not a whole number"#);

        let error = read_training_trace("philly.csv", "id,gpus,duration_s\n", &options(1.0)).unwrap_err();
        assert!(error.to_string().starts_with(r#"philly.csv: missing column "submit_time_s""#), "{error}");

        let error = read_training_trace("p.csv", "id,submit_time_s,gpus,duration_s\na,0,1\n", &options(1.0))
            .unwrap_err();
        assert_eq!(error.to_string(), r#"p.csv:2: column "duration_s" is missing from this row"#);

        let error =
            read_llm_trace("l.csv", "timestamp_s,context_tokens,generated_tokens\n1,2,3.5\n", &options(1.0))
                .unwrap_err();
        assert_eq!(error.to_string(), r#"l.csv:2: generated_tokens "3.5" is not a whole number"#);

        let bad = TraceOptions { block: 0, ..options(1.0) };
        assert!(read_training_trace("t.csv", JOBS, &bad).is_err());
    }

    #[test]
    fn a_request_too_large_is_an_error_not_a_panic() {
        let huge = TraceOptions { gpu_scale: 1e6, ..options(1.0) };
        let error = read_training_trace("t.csv", JOBS, &huge).unwrap_err();
        assert!(error.to_string().contains("more than 1000000"), "{error}");
    }

    #[test]
    fn max_requests_keeps_the_earliest() {
        let limited = TraceOptions { max_requests: Some(2), ..options(1.0) };
        let demand = read_training_trace("t.csv", JOBS, &limited).unwrap();
        let ids: Vec<_> = demand.requests.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["train-0", "train-1"]);
        assert!(demand.jobs_per_request_note.contains("only the earliest 2"));
    }

    #[test]
    fn llm_buckets_cost_tokens_over_throughput() {
        // 1000 tokens/GPU-s = 60,000 tokens per GPU-minute. Minute 0 has
        // 60,000 + 60,001 tokens -> 3 GPUs; minute 1 has 100 -> 1 GPU; minute
        // 61 (window 1 of 60 minutes) has 600,000 -> 10 GPUs -> 16 in 8-blocks.
        let csv = "timestamp_s,context_tokens,generated_tokens,extra
0,50000,10000,x
59.9,60000,1,x
60,90,10,x
3660,599000,1000,x
";
        let llm = TraceOptions { tokens_per_gpu_second: 1000.0, ..options(1.0) };
        check_llm(csv, &llm, "infer-0 +0h 8/8 1h inference\ninfer-1 +1h 16/8 1h inference");
        let per_minute = TraceOptions { block: 1, group_hours: 0.0, ..llm.clone() };
        check_llm(
            csv,
            &per_minute,
            "
infer-0 +0h 3/1 1h inference
infer-1 +0.016666666666666666h 1/1 1h inference
infer-61 +1.0166666666666666h 10/1 1h inference",
        );
        // Doubling time spreads the calls over minutes 0, 1 (119.8 s), 2 (120 s)
        // and 122 (window 2); each minute now needs 1, 2, 1 and 10 GPUs.
        let stretched = TraceOptions { time_scale: 2.0, gpu_scale: 2.0, block: 1, ..llm };
        check_llm(csv, &stretched, "infer-0 +0h 4/1 1h inference\ninfer-2 +2h 20/1 1h inference");
    }

    fn shared(path: &str) -> Option<std::path::PathBuf> {
        let path =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/")).join(path);
        if path.exists() {
            Some(path)
        } else {
            eprintln!("skipped: {} is absent (shared data not installed)", path.display());
            None
        }
    }

    #[test]
    fn philly_dev_trace_becomes_training_demand() {
        let Some(path) = shared("traces/philly_demand_dev.csv") else { return };
        for group_hours in [0.0, 1.0, 24.0] {
            let demand = read_trace_file(&path, &options(group_hours)).unwrap();
            assert_eq!(demand.rows_read, 43_640);
            assert_eq!(demand.source, "philly_demand_dev.csv");
            let gpus: u64 = demand.requests.iter().map(|r| u64::from(r.gpus)).sum();
            let largest = demand.requests.iter().map(|r| r.gpus).max().unwrap_or(0);
            eprintln!(
                "philly group_hours={group_hours}: {} requests, {} skipped, {gpus} GPUs in total, largest {largest}; {}",
                demand.requests.len(),
                demand.rows_skipped,
                demand.jobs_per_request_note
            );
            assert!(!demand.requests.is_empty());
            assert!(demand.requests.windows(2).all(|w| (w[0].submit, &w[0].id) <= (w[1].submit, &w[1].id)));
            assert!(demand.requests.iter().all(|r| r.gpus % r.block == 0));
        }
    }

    #[test]
    fn azure_llm_code_trace_becomes_inference_demand() {
        let Some(path) = shared("traces/azure_llm_2023_code_requests.csv") else { return };
        for group_hours in [0.0, 1.0] {
            let demand = read_trace_file(&path, &options(group_hours)).unwrap();
            assert_eq!(demand.rows_read, 8_819);
            let largest = demand.requests.iter().map(|r| r.gpus).max().unwrap_or(0);
            eprintln!(
                "azure code group_hours={group_hours}: {} requests, largest {largest} GPUs; {}",
                demand.requests.len(),
                demand.jobs_per_request_note
            );
            assert!(demand.requests.iter().all(|r| r.workload == WorkloadClass::Inference));
        }
    }
}
