//! Review-trigger conditions: CEL expressions over recorded metrics and
//! declared events.
//!
//! A condition sees exactly two variables:
//!
//! * `metrics`, a map from metric name to a double (`metrics.cumulative_profit`);
//! * `events`, the list of declared event names (`"agi_declared" in events`).
//!
//! So the arrangement's trigger reads
//! `metrics.cumulative_profit >= 100e9 && "agi_declared" in events`.
//!
//! Conditions are compiled once, when the contract is parsed: a syntax error or
//! a reference to any other variable is reported then, with its position inside
//! the expression, rather than the first time the trigger is evaluated. A
//! metric that is not recorded is an evaluation error that names it; a
//! condition that means "only once the metric exists" says so with
//! `has(metrics.name) && ...`.
//!
//! The compiled program is shared behind an `Arc` because `cel::Program` is
//! not `Clone`; a condition is immutable once compiled, so sharing costs
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, ExecutionError, Program, Value};

/// The variables a condition may read.
const VARIABLES: [&str; 2] = ["metrics", "events"];

/// A condition longer than this is a mistake, not a contract term.
const MAX_CONDITION_BYTES: usize = 4096;

/// A compiled CEL condition and the text it was compiled from.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
}

/// Named metrics and declared events, the input a condition is evaluated on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub metrics: BTreeMap<String, f64>,
    pub events: BTreeSet<String>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) the value of a metric.
    pub fn with_metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.insert(name.to_owned(), value);
        self
    }

    /// Records that an event was declared.
    pub fn with_event(mut self, name: &str) -> Self {
        self.events.insert(name.to_owned());
        self
    }
}

/// Why a condition could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConditionError {
    /// The expression is not valid CEL. `line` and `column` are 1-based,
    /// inside the expression.
    #[error("invalid CEL condition at {line}:{column} of the expression: {message}")]
    Syntax { message: String, line: usize, column: usize },
    /// The expression reads a variable other than `metrics` and `events`.
    #[error(
        "the condition refers to `{name}` at {line}:{column} of the expression; \
         only `metrics` (a map of doubles) and `events` (a list of strings) are defined"
    )]
    UnknownVariable { name: String, line: usize, column: usize },
    /// The expression is longer than `MAX_CONDITION_BYTES`.
    #[error("the condition is {length} bytes long; at most {max} are allowed")]
    TooLong { length: usize, max: usize },
    /// The expression reads a metric that has not been recorded.
    #[error("the condition reads metric `{name}`, which is not recorded (recorded metrics: {recorded})")]
    MissingMetric { name: String, recorded: String },
    /// The expression evaluated to something other than a bool.
    #[error("the condition must evaluate to a bool, but it evaluated to {found}")]
    NotBool { found: String },
    /// Any other evaluation error, as CEL reports it.
    #[error("the condition could not be evaluated: {0}")]
    Evaluation(String),
}

impl ConditionError {
    /// The 1-based `(line, column)` inside the expression that the error is
    /// about, for errors found when compiling.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            Self::Syntax { line, column, .. } | Self::UnknownVariable { line, column, .. } => {
                Some((*line, *column))
            }
            _ => None,
        }
    }
}

impl Condition {
    /// Compiles `source`, rejecting syntax errors and references to variables
    /// other than `metrics` and `events`.
    pub fn parse(source: &str) -> Result<Condition, ConditionError> {
        if source.len() > MAX_CONDITION_BYTES {
            return Err(ConditionError::TooLong { length: source.len(), max: MAX_CONDITION_BYTES });
        }
        if source.trim().is_empty() {
            return Err(ConditionError::Syntax {
                message: "the condition is empty; expected a CEL expression such as \
                          `metrics.cumulative_profit >= 100e9`"
                    .to_owned(),
                line: 1,
                column: 1,
            });
        }
        let program = Program::compile(source).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map_or((1, 1), |e| (clamp_position(e.pos.0), clamp_position(e.pos.1)));
            let message = first.map_or_else(|| errors.to_string(), |e| e.msg.clone());
            ConditionError::Syntax { message, line, column }
        })?;
        let mut free = Vec::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free);
        if let Some((name, id)) = free.into_iter().find(|(name, _)| !VARIABLES.contains(&name.as_str())) {
            let (line, column) = program
                .source_info()
                .offset_for(id)
                .map_or((1, 1), |(start, _)| line_column(source, start as usize));
            return Err(ConditionError::UnknownVariable { name, line, column });
        }
        Ok(Condition { source: source.to_owned(), program: Arc::new(program) })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition on `metrics`; it must yield a bool.
    pub fn evaluate(&self, metrics: &Metrics) -> Result<bool, ConditionError> {
        // The standard environment is the same for every evaluation; build it once.
        static STANDARD: OnceLock<Arc<Env>> = OnceLock::new();
        let mut context = Context::with_env(Arc::clone(STANDARD.get_or_init(|| Arc::new(Env::stdlib()))));
        let values: HashMap<String, f64> = metrics.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
        context.add_variable_from_value("metrics", values);
        let events: Vec<String> = metrics.events.iter().cloned().collect();
        context.add_variable_from_value("events", events);
        match self.program.execute(&context) {
            Ok(Value::Bool(result)) => Ok(result),
            Ok(other) => Err(ConditionError::NotBool { found: describe_value(&other) }),
            Err(ExecutionError::NoSuchKey(name)) => Err(ConditionError::MissingMetric {
                name: name.to_string(),
                recorded: if metrics.metrics.is_empty() {
                    "none".to_owned()
                } else {
                    metrics.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
            Err(error) => Err(ConditionError::Evaluation(error.to_string())),
        }
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Condition {
    /// Two conditions are equal when they were compiled from the same text.
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn clamp_position(value: isize) -> usize {
    usize::try_from(value).unwrap_or(0).max(1)
}

/// The 1-based line and column of character offset `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in text.chars().take(offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

fn describe_value(value: &Value) -> String {
    let kind = match value {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Int(_) => "an int",
        Value::UInt(_) => "a uint",
        Value::Float(_) => "a double",
        Value::String(_) => "a string",
        Value::Null => "null",
        _ => "a value",
    };
    format!("{kind} ({value:?})")
}

/// Collects the identifiers `expression` reads that no comprehension (a macro
/// such as `events.exists(e, ...)`) binds, with the id of the node that reads
/// them. `cel::Program::references` would also list the macros' own loop
/// variables, which are not free.
fn free_variables(expression: &IdedExpr, bound: &mut Vec<String>, free: &mut Vec<(String, u64)>) {
    match &expression.expr {
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.iter().any(|b| b == name) {
                free.push((name.clone(), expression.id));
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, free);
            }
            for argument in &call.args {
                free_variables(argument, bound, free);
            }
        }
        Expr::Comprehension(comprehension) => {
            free_variables(&comprehension.iter_range, bound, free);
            free_variables(&comprehension.accu_init, bound, free);
            let depth = bound.len();
            bound.push(comprehension.iter_var.clone());
            bound.extend(comprehension.iter_var2.clone());
            bound.push(comprehension.accu_var.clone());
            free_variables(&comprehension.loop_cond, bound, free);
            free_variables(&comprehension.loop_step, bound, free);
            free_variables(&comprehension.result, bound, free);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                free_variables(element, bound, free);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::StructField(field) => free_variables(&field.value, bound, free),
                    EntryExpr::MapEntry(entry) => {
                        free_variables(&entry.key, bound, free);
                        free_variables(&entry.value, bound, free);
                    }
                }
            }
        }
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                match &entry.expr {
                    EntryExpr::StructField(field) => free_variables(&field.value, bound, free),
                    EntryExpr::MapEntry(entry) => {
                        free_variables(&entry.key, bound, free);
                        free_variables(&entry.value, bound, free);
                    }
                }
            }
        }
        Expr::Select(select) => free_variables(&select.operand, bound, free),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGI: &str = r#"metrics.cumulative_profit >= 100e9 && "agi_declared" in events"#;

    fn metrics(profit: f64, events: &[&str]) -> Metrics {
        events.iter().fold(Metrics::new().with_metric("cumulative_profit", profit), |m, e| m.with_event(e))
    }

    /// Evaluates `source` on `input` and renders the outcome as text.
    fn check(source: &str, input: &Metrics, expected: &str) {
        let outcome = match Condition::parse(source) {
            Err(error) => format!("parse error: {error}"),
            Ok(condition) => match condition.evaluate(input) {
                Ok(value) => value.to_string(),
                Err(error) => format!("error: {error}"),
            },
        };
        assert!(outcome.contains(expected), "{source:?}: expected {expected:?} in {outcome:?}");
    }

    #[test]
    fn the_agi_trigger_needs_both_the_profit_and_the_declaration() {
        check(AGI, &metrics(120e9, &["agi_declared"]), "true");
        check(AGI, &metrics(120e9, &[]), "false");
        check(AGI, &metrics(99e9, &["agi_declared", "other"]), "false");
        check(AGI, &metrics(100e9, &["agi_declared"]), "true");
    }

    #[test]
    fn integers_compare_with_double_metrics() {
        check("metrics.revenue > 10", &Metrics::new().with_metric("revenue", 11.0), "true");
    }

    #[test]
    fn macros_may_bind_their_own_variables() {
        check(r#"events.exists(e, e.startsWith("agi"))"#, &metrics(0.0, &["agi_declared"]), "true");
        check(r#"has(metrics.cumulative_profit)"#, &Metrics::new(), "false");
    }

    #[test]
    fn a_missing_metric_is_named() {
        check(
            AGI,
            &Metrics::new().with_metric("revenue", 1.0).with_event("agi_declared"),
            "reads metric `cumulative_profit`, which is not recorded (recorded metrics: revenue)",
        );
    }

    #[test]
    fn a_result_that_is_not_a_bool_is_an_error() {
        check(
            "metrics.cumulative_profit * 2.0",
            &metrics(1.0, &[]),
            "must evaluate to a bool, but it evaluated to a double",
        );
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let error = Condition::parse("metrics.x >= 1 &&\n  (events").unwrap_err();
        assert!(matches!(error, ConditionError::Syntax { line: 2, .. }), "{error:?}");
        check("", &Metrics::new(), "the condition is empty");
    }

    #[test]
    fn only_metrics_and_events_are_defined() {
        check("metrics.x > 1 || profit > 2", &Metrics::new(), "refers to `profit` at 1:18");
        check("events.exists(e, e == x)", &Metrics::new(), "refers to `x` at 1:23");
    }

    #[test]
    fn contract_sets_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Condition>();
        shareable::<crate::contract::ContractSet>();
    }

    #[test]
    fn a_condition_prints_as_its_source() {
        let condition = Condition::parse(AGI).unwrap();
        assert_eq!(format!("{condition:?}"), format!("Condition({AGI:?})"));
        assert_eq!(condition.to_string(), AGI);
    }
}
