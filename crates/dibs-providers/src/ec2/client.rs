//! One signed call to EC2's Query API, retried while EC2 asks to slow down.
//!
//! A call is `POST /` with a form body (`Action=..&Version=2016-11-15&..`), signed with
//! Signature Version 4 for service `ec2` in the call's region: the signature's credential
//! scope is also how a server that hosts many services (moto) routes the call. Throttling,
//! 5xx answers and lost connections are retried with jittered, doubling backoff until the
//! call's deadline; every other answer is returned at once.

use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde::de::DeserializeOwned;

use super::config::{Ec2Config, checked_region};
use super::error::{Ec2Error, ErrorClass, credential_hint, parse_error_document};
use super::wire::{Page, Params};

/// The signing name of EC2.
const SERVICE: &str = "ec2";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// Tries of one call at most, whatever its deadline.
pub const MAX_TRIES: u32 = 8;
/// The first wait before a retry; each further one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The largest answer read (a page of 100 instance types is about 500 KB).
pub const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;
/// Pages of a described list read at most (100 items a page).
pub const MAX_PAGES: usize = 100;

/// Which failures a call may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and idempotent writes: throttling, 5xx and lost connections.
    Always,
    /// Launches: only answers in which EC2 refused to act (throttling). After a lost
    /// connection or a 5xx nobody knows whether the instances were launched; the caller
    /// looks for them by tag before launching again.
    OnlyRefusals,
}

/// Codes with which EC2 refuses a call before doing anything: a launch answered so may be
/// sent again as it is.
const REFUSED_CODES: [&str; 4] =
    ["RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"];

/// Signs and sends calls with one configuration.
#[derive(Debug, Clone)]
pub struct Client {
    config: Ec2Config,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(config: Ec2Config) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.try_timeout))
            .build()
            .into();
        Self { config, agent }
    }

    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// Calls `action` and reads its answer as `T`.
    pub fn call<T: DeserializeOwned>(
        &self,
        region: &str,
        action: &'static str,
        params: &Params,
        retry: Retry,
    ) -> Result<T, Ec2Error> {
        let (status, body) = self.call_with_retries(region, action, &params.body(action), retry)?;
        quick_xml::de::from_str(&body).map_err(|error| Ec2Error::Malformed {
            action,
            region: region.to_owned(),
            status,
            detail: format!("{error} in {}", excerpt(&body)),
        })
    }

    /// Calls `action` page after page (`MaxResults`, `NextToken`) and returns every item.
    pub fn paginate<P: Page + DeserializeOwned>(
        &self,
        region: &str,
        action: &'static str,
        params: &Params,
        page_size: u32,
    ) -> Result<Vec<P::Item>, Ec2Error> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut page_params = params.clone();
            page_params.set("MaxResults", page_size.to_string());
            if let Some(token) = &token {
                page_params.set("NextToken", token.as_str());
            }
            let page: P = self.call(region, action, &page_params, Retry::Always)?;
            let (page_items, next) = page.into_parts();
            items.extend(page_items);
            match next {
                Some(next) => token = Some(next),
                None => return Ok(items),
            }
        }
        Err(Ec2Error::Malformed {
            action,
            region: region.to_owned(),
            status: 200,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    fn call_with_retries(
        &self,
        region: &str,
        action: &'static str,
        body: &str,
        retry: Retry,
    ) -> Result<(u16, String), Ec2Error> {
        let deadline = Instant::now() + self.config.call_deadline;
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match self.try_once(region, action, body) {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let retryable = match (&error, retry) {
                // A launch is tried again here only when EC2 said it did nothing (it
                // throttled the call). After a lost connection or a 5xx nobody knows
                // whether the instances were launched, and a server need not honour the
                // client token (moto does not): the caller looks for them by tag first.
                (Ec2Error::Api { code, .. }, Retry::OnlyRefusals) => REFUSED_CODES.contains(&code.as_str()),
                (_, Retry::OnlyRefusals) => false,
                _ => error.class() == ErrorClass::Throttling,
            };
            let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            if !retryable || tries >= MAX_TRIES || Instant::now() + wait >= deadline {
                return Err(if tries > 1 {
                    Ec2Error::GaveUp { tries, last: Box::new(error) }
                } else {
                    error
                });
            }
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One signed `POST`: the status and body of a 2xx answer, else the error it holds.
    fn try_once(&self, region: &str, action: &'static str, body: &str) -> Result<(u16, String), Ec2Error> {
        checked_region("region", region)
            .map_err(|_| Ec2Error::BadRegion { action, region: region.to_owned() })?;
        let endpoint = self.config.endpoint(region);
        let signed_headers = self.sign(region, action, &endpoint, body)?;
        let mut request = self.agent.post(&endpoint).header("content-type", FORM);
        for (name, value) in &signed_headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let transport = |detail: String| Ec2Error::Transport {
            action,
            region: region.to_owned(),
            endpoint: endpoint.clone(),
            detail,
        };
        let mut response = request.send(body.as_bytes()).map_err(|error| transport(error.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|error| transport(format!("reading the answer: {error}")))?;
        if (200..300).contains(&status) {
            return Ok((status, text));
        }
        Err(self.error_answer(region, action, status, &text))
    }

    fn error_answer(&self, region: &str, action: &'static str, status: u16, body: &str) -> Ec2Error {
        match parse_error_document(body) {
            Some((code, message)) => Ec2Error::Api {
                action,
                region: region.to_owned(),
                status,
                hint: credential_hint(&code, action, self.config.credentials.access_key_id()),
                code,
                message,
            },
            None => Ec2Error::Api {
                action,
                region: region.to_owned(),
                status,
                code: format!("HTTP{status}"),
                message: excerpt(body),
                hint: String::new(),
            },
        }
    }

    /// The headers Signature Version 4 adds (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` with temporary credentials).
    fn sign(
        &self,
        region: &str,
        action: &'static str,
        endpoint: &str,
        body: &str,
    ) -> Result<Vec<(String, String)>, Ec2Error> {
        let signing_error = |detail: String| Ec2Error::Signing { action, region: region.to_owned(), detail };
        let identity = self.config.credentials.signing_identity().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|error| signing_error(error.to_string()))?
            .into();
        let request = SignableRequest::new(
            "POST",
            endpoint,
            [("content-type", FORM)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|error| signing_error(error.to_string()))?;
        let (instructions, _signature) =
            sign(request, &params).map_err(|error| signing_error(error.to_string()))?.into_parts();
        Ok(instructions.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect())
    }
}

/// The start of an answer, for an error message.
fn excerpt(body: &str) -> String {
    const EXCERPT_CHARS: usize = 300;
    let excerpt: String = body.chars().take(EXCERPT_CHARS).collect();
    if excerpt.len() < body.len() { format!("{excerpt}...") } else { excerpt }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::Credentials;

    #[test]
    fn a_region_that_is_not_a_region_name_reaches_no_host() {
        let config =
            Ec2Config::new("us-east-1", Some("http://127.0.0.1:9"), Credentials::new("a", "b", None))
                .unwrap();
        let error = Client::new(config)
            .call::<crate::ec2::wire::DescribeAvailabilityZonesResponse>(
                "evil.example.com/x",
                "DescribeAvailabilityZones",
                &Params::new(),
                Retry::Always,
            )
            .unwrap_err();
        assert_eq!(
            error,
            Ec2Error::BadRegion { action: "DescribeAvailabilityZones", region: "evil.example.com/x".into() }
        );
    }
}
