//! How numbers, money, instants and states read on the pages.

use dibs_core::types::Timestamp;
use maud::{Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// A status as people say it, for column heads and badges. `provisioning` reads
/// "awarded": the award is made and the capacity is on its way.
pub fn status_label(status: &str) -> &'static str {
    match status {
        "screening" => "Screening",
        "first_refusal" => "First refusal",
        "market" => "Market",
        "provisioning" => "Awarded, provisioning",
        "active" => "Active",
        "released" => "Released",
        "unfilled" => "Unfilled",
        "cancelled" => "Cancelled",
        _ => "Unknown",
    }
}

/// A badge naming a status; its class picks a colour with enough contrast, and the text
/// says the same, so colour is never the only cue.
pub fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge status-" (status) } { (status_label(status)) } }
}

/// USD with thousands separators: `$1,234.56`, or `$1.23M` past a million.
pub fn usd(amount: f64) -> String {
    if !amount.is_finite() {
        return "–".into();
    }
    let sign = if amount < 0.0 { "-" } else { "" };
    let amount = amount.abs();
    if amount >= 1e9 {
        format!("{sign}${:.2}B", amount / 1e9)
    } else if amount >= 1e6 {
        format!("{sign}${:.2}M", amount / 1e6)
    } else {
        let cents = (amount * 100.0).round() as u64;
        format!("{sign}${}.{:02}", thousands(cents / 100), cents % 100)
    }
}

/// A price per GPU-hour or node-hour: four decimals, as the ledger reasons print them.
pub fn price(amount: f64) -> String {
    format!("${amount:.4}")
}

/// A whole number with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An instant as `2026-06-01 12:00:00Z`, in a `<time>` element.
pub fn instant(at: Timestamp) -> Markup {
    let text = at.to_string();
    html! { time datetime=(text) { (text.replacen('T', " ", 1)) } }
}

/// How far `at` is from `now`: `in 3 h`, `2 days ago`.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    let seconds = at.unix() - now.unix();
    let magnitude = seconds.unsigned_abs() as f64;
    let amount = if magnitude < 90.0 {
        format!("{magnitude:.0} s")
    } else if magnitude < 5400.0 {
        format!("{:.0} min", magnitude / 60.0)
    } else if magnitude < 48.0 * 3600.0 {
        format!("{:.0} h", magnitude / 3600.0)
    } else {
        format!("{:.1} days", magnitude / 86_400.0)
    };
    if seconds >= 0 { format!("in {amount}") } else { format!("{amount} ago") }
}

/// A hash shortened for a table cell, whole in its title and for copying.
pub fn hash(hex: &str) -> Markup {
    html! { code.hash title=(hex) { (hex.get(..12).unwrap_or(hex)) "…" } }
}

/// What a query value keeps as it is: RFC 3986's unreserved characters. Everything else is
/// percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a query value (names here are ASCII words, but a filter is user input).
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(said: Vec<String>, expected: &[&str]) {
        assert_eq!(said, expected);
    }

    #[test]
    fn money_and_counts_read_as_a_finance_person_writes_them() {
        check(
            [0.0, 1234.5, 999_999.994, 2_500_000.0, 250e9, -12.0].map(usd).to_vec(),
            &["$0.00", "$1,234.50", "$999,999.99", "$2.50M", "$250.00B", "-$12.00"],
        );
        check([0, 999, 1000, 1_234_567].map(thousands).to_vec(), &["0", "999", "1,000", "1,234,567"]);
    }

    #[test]
    fn every_status_has_a_label() {
        for status in crate::view::STATUSES {
            assert_ne!(status_label(status), "Unknown", "{status}");
        }
    }

    #[test]
    fn instants_read_relative_to_now() {
        let now = Timestamp::from_unix(1_000_000);
        check(
            [30, -600, 3 * 3600, -3 * 86_400].map(|s| relative(now.plus_seconds(s), now)).to_vec(),
            &["in 30 s", "10 min ago", "in 3 h", "3.0 days ago"],
        );
    }

    #[test]
    fn a_query_value_keeps_unreserved_characters_and_encodes_the_rest_in_capitals() {
        check(
            ["gpu-req_1.a~b", "a b&c=d/e", "é"].map(encode).to_vec(),
            &["gpu-req_1.a~b", "a%20b%26c%3Dd%2Fe", "%C3%A9"],
        );
    }
}
