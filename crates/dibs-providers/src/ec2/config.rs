//! Where the EC2 adapter connects and as whom: read from the variables the AWS SDKs and CLI
//! read, or given explicitly (tests). Secrets never appear in `Debug` output.

use std::fmt;
use std::time::Duration;

/// One try of a call waits at most this long for EC2's answer.
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(30);
/// A call, retries included, gives up after this long.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(60);

/// An AWS access key: the id names it, the secret signs with it, the session token goes with
/// temporary credentials. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl Credentials {
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: session_token.map(str::to_owned),
        }
    }

    /// The key id: not a secret (AWS prints it in its own error messages), so errors name it.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub(crate) fn signing_identity(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "dibs",
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the EC2 adapter reaches EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Config {
    /// The region calls go to when the caller names none (`AWS_REGION`).
    pub default_region: String,
    /// One endpoint for every region (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`: a test
    /// server, a VPC endpoint); `None`: each region's public endpoint.
    pub endpoint_override: Option<String>,
    pub credentials: Credentials,
    pub try_timeout: Duration,
    pub call_deadline: Duration,
}

/// A configuration that cannot be used, naming the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (the EC2 adapter reads AWS credentials and region as the AWS CLI does)")]
    Missing(&'static str),
    #[error("{name} is {value:?}: an endpoint is a URL starting with http:// or https://")]
    BadEndpoint { name: &'static str, value: String },
    #[error("{name} is {value:?}: a region is lowercase letters, digits and '-', like us-east-1")]
    BadRegion { name: &'static str, value: String },
    #[error(
        "{endpoint} needs HTTPS, which this build lacks (dibs-providers' feature `tls`); only an \
         http:// endpoint (AWS_ENDPOINT_URL_EC2) can be reached"
    )]
    NoTls { endpoint: String },
}

impl Ec2Config {
    /// A configuration with the default timeouts.
    pub fn new(
        default_region: &str,
        endpoint_override: Option<&str>,
        credentials: Credentials,
    ) -> Result<Self, ConfigError> {
        let default_region = checked_region("region", default_region)?;
        let endpoint_override = endpoint_override.map(|url| checked_endpoint("endpoint", url)).transpose()?;
        Ok(Self {
            default_region,
            endpoint_override,
            credentials,
            try_timeout: DEFAULT_TRY_TIMEOUT,
            call_deadline: DEFAULT_CALL_DEADLINE,
        })
    }

    /// Reads the process's environment; see [`Ec2Config::from_vars`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (optional),
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`), and `AWS_ENDPOINT_URL_EC2` or
    /// `AWS_ENDPOINT_URL` (optional) through `var`. Empty values count as unset, as the
    /// AWS CLI counts them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| var(name).filter(|value| !value.trim().is_empty());
        let required = |name: &'static str| get(name).ok_or(ConfigError::Missing(name));
        let credentials = Credentials::new(
            &required("AWS_ACCESS_KEY_ID")?,
            &required("AWS_SECRET_ACCESS_KEY")?,
            get("AWS_SESSION_TOKEN").as_deref(),
        );
        let (region_name, region) = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .into_iter()
            .find_map(|name| get(name).map(|value| (name, value)))
            .ok_or(ConfigError::Missing("AWS_REGION"))?;
        let default_region = checked_region(region_name, &region)?;
        let endpoint_override = ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]
            .into_iter()
            .find_map(|name| get(name).map(|value| (name, value)))
            .map(|(name, value)| checked_endpoint(name, &value))
            .transpose()?;
        checked_tls(&default_region, endpoint_override.as_deref())?;
        Ok(Self {
            default_region,
            endpoint_override,
            credentials,
            try_timeout: DEFAULT_TRY_TIMEOUT,
            call_deadline: DEFAULT_CALL_DEADLINE,
        })
    }

    /// The URL calls about `region` are posted to.
    pub fn endpoint(&self, region: &str) -> String {
        match &self.endpoint_override {
            Some(url) => url.clone(),
            None => format!("https://ec2.{region}.amazonaws.com/"),
        }
    }
}

/// A region name as AWS writes them; anything else would end up in a host name.
pub(crate) fn checked_region(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let valid = !value.is_empty()
        && value.len() <= 32
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid { Ok(value.to_owned()) } else { Err(ConfigError::BadRegion { name, value: value.to_owned() }) }
}

/// AWS's own endpoints are HTTPS only: a build without TLS can reach only an `http://`
/// override, and says so when it is built rather than at its first call.
fn checked_tls(region: &str, endpoint_override: Option<&str>) -> Result<(), ConfigError> {
    let endpoint =
        endpoint_override.map_or_else(|| format!("https://ec2.{region}.amazonaws.com/"), str::to_owned);
    if endpoint.starts_with("https://") && !cfg!(feature = "tls") {
        return Err(ConfigError::NoTls { endpoint });
    }
    Ok(())
}

fn checked_endpoint(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let rest = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() => {
            // The Query API posts to the root path.
            Ok(if value.ends_with('/') { value.to_owned() } else { format!("{value}/") })
        }
        _ => Err(ConfigError::BadEndpoint { name, value: value.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Ec2Config, ConfigError> {
        let vars: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Ec2Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn reads_the_variables_the_aws_cli_reads_and_keeps_secrets_out_of_debug() {
        let local = from(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ("AWS_SESSION_TOKEN", "session-secret"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:5000"),
        ])
        .unwrap();
        assert_eq!(local.default_region, "us-east-1");
        assert_eq!(local.endpoint("us-west-2"), "http://127.0.0.1:5000/");
        let debug = format!("{local:?}");
        assert!(debug.contains("AKIDEXAMPLE"), "{debug}");
        assert!(!debug.contains("very-secret") && !debug.contains("session-secret"), "{debug}");

        let aws =
            from(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b"), ("AWS_REGION", "us-west-2")]);
        if cfg!(feature = "tls") {
            assert_eq!(aws.unwrap().endpoint("eu-north-1"), "https://ec2.eu-north-1.amazonaws.com/");
        } else {
            let error = aws.unwrap_err().to_string();
            assert!(error.starts_with("https://ec2.us-west-2.amazonaws.com/ needs HTTPS"), "{error}");
        }
    }

    #[test]
    fn a_missing_or_bad_variable_is_named() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("AWS_SECRET_ACCESS_KEY", "b"), ("AWS_REGION", "us-east-1")], "AWS_ACCESS_KEY_ID is not set"),
            (&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")], "AWS_REGION is not set"),
            (
                &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b"), ("AWS_REGION", "us/east")],
                "AWS_REGION is \"us/east\"",
            ),
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "a"),
                    ("AWS_SECRET_ACCESS_KEY", "b"),
                    ("AWS_REGION", "us-east-1"),
                    ("AWS_ENDPOINT_URL", "localhost:5000"),
                ],
                "AWS_ENDPOINT_URL is \"localhost:5000\"",
            ),
        ];
        for (vars, expected) in cases {
            let error = from(vars).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }
}
