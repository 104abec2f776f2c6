//! What went wrong in a call to EC2, and what it means for dibs.
//!
//! EC2 answers an error with an XML document holding a code and a message
//! (`<Response><Errors><Error><Code>..</Code><Message>..</Message>`; moto answers an
//! authentication failure as `<ErrorResponse><Errors><Error>`, so any root is accepted).
//! The code decides what dibs does, through [`ErrorClass`]: a zone out of capacity is
//! tried elsewhere, a quota is the same in every zone of the region, credentials are the
//! operator's to fix, throttling is retried, a dry run's "would have succeeded" is success.
//! The code lists follow what Karpenter and SkyPilot treat as capacity errors.

/// What an error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// This zone has no capacity for the instance type now: another zone may.
    ZoneCapacity,
    /// An account limit of the region (instances, vCPUs, spot requests): every zone of the
    /// region answers the same until the quota is raised or capacity is released.
    RegionQuota,
    /// The credentials were refused or lack a permission: a configuration error.
    Auth,
    /// EC2 asked to slow down or failed on its side (5xx): worth retrying.
    Throttling,
    /// `DryRunOperation`: the call would have succeeded; nothing was done.
    DryRunSucceeded,
    /// Anything else (a parameter EC2 refused, an unknown instance type, ...).
    Other,
}

impl ErrorClass {
    /// True for errors that mean "no capacity here": the GPUs go back to the market.
    pub fn is_capacity(self) -> bool {
        matches!(self, Self::ZoneCapacity | Self::RegionQuota)
    }
}

/// Codes that say one zone (or one zone's pool) cannot take the launch now.
const ZONE_CAPACITY_CODES: [&str; 10] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacityOnHost",
    "InsufficientFreeAddressesInSubnet",
    "UnfulfillableCapacity",
    "ReservationCapacityExceeded",
    "SpotMaxPriceTooLow",
    // The instance type (or its configuration) is not offered in this zone.
    "Unsupported",
];

/// Codes that say an account limit of the whole region is reached.
const REGION_QUOTA_CODES: [&str; 4] =
    ["InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "ResourceLimitExceeded"];

const AUTH_CODES: [&str; 11] = [
    "AuthFailure",
    "UnauthorizedOperation",
    // moto's (and IAM's) word for a missing permission; EC2 says UnauthorizedOperation.
    "AccessDenied",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
    "Blocked",
];

const THROTTLING_CODES: [&str; 8] = [
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// Classifies an error code, with the HTTP status for codes not in the lists.
pub fn classify(code: &str, status: u16) -> ErrorClass {
    let is = |codes: &[&str]| codes.contains(&code);
    if code == "DryRunOperation" {
        ErrorClass::DryRunSucceeded
    } else if is(&ZONE_CAPACITY_CODES) {
        ErrorClass::ZoneCapacity
    } else if is(&REGION_QUOTA_CODES) {
        ErrorClass::RegionQuota
    } else if is(&AUTH_CODES) || status == 401 || status == 403 {
        ErrorClass::Auth
    } else if is(&THROTTLING_CODES) || status == 429 || status >= 500 {
        ErrorClass::Throttling
    } else {
        ErrorClass::Other
    }
}

/// The code and message of an EC2 error document, or `None` when the body holds no
/// `<Error><Code>` (an HTML page from a proxy, say).
pub fn parse_error_document(body: &str) -> Option<(String, String)> {
    let document: ErrorDocument = quick_xml::de::from_str(body).ok()?;
    let error = document.errors.and_then(|errors| errors.error.into_iter().next()).or(document.error)?;
    Some((error.code, error.message))
}

/// `<Response><Errors><Error>` (EC2), `<ErrorResponse><Errors><Error>` (moto's
/// authentication failures) or `<ErrorResponse><Error>` (other AWS query services); the
/// root's name is not checked.
#[derive(serde::Deserialize)]
struct ErrorDocument {
    #[serde(rename = "Errors")]
    errors: Option<ErrorList>,
    #[serde(rename = "Error")]
    error: Option<ErrorBody>,
}

#[derive(serde::Deserialize)]
struct ErrorList {
    #[serde(rename = "Error", default)]
    error: Vec<ErrorBody>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

/// Why a call to EC2 failed. Every variant names the action and the region.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 answered with an error code.
    #[error("EC2 {action} in {region} answered HTTP {status} {code}: {message}{hint}")]
    Api { action: &'static str, region: String, status: u16, code: String, message: String, hint: String },
    /// No answer: the connection failed or timed out.
    #[error("EC2 {action} in {region}: no answer from {endpoint}: {detail}")]
    Transport { action: &'static str, region: String, endpoint: String, detail: String },
    /// An answer that is not what the action returns.
    #[error("EC2 {action} in {region}: answer not understood (HTTP {status}): {detail}")]
    Malformed { action: &'static str, region: String, status: u16, detail: String },
    /// The request could not be signed (a credential with characters a header cannot hold).
    #[error("EC2 {action} in {region}: could not sign the request: {detail}")]
    Signing { action: &'static str, region: String, detail: String },
    /// A region name that cannot be part of a host name or a signature.
    #[error("EC2 {action}: {region:?} is not a region name (like us-east-1)")]
    BadRegion { action: &'static str, region: String },
    /// Retryable failures until the call's deadline; the last one is kept.
    #[error("{last} (gave up after {tries} tries)")]
    GaveUp { tries: u32, last: Box<Ec2Error> },
}

impl Ec2Error {
    /// What this error means for the caller (transport errors are worth retrying).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api { status, code, .. } => classify(code, *status),
            Self::Transport { .. } => ErrorClass::Throttling,
            Self::Malformed { .. } | Self::Signing { .. } | Self::BadRegion { .. } => ErrorClass::Other,
            Self::GaveUp { last, .. } => last.class(),
        }
    }

    /// EC2's error code, when EC2 answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }
}

/// What the operator should check for an authentication or permission code, naming the
/// access key (never the secret).
pub fn credential_hint(code: &str, action: &str, access_key_id: &str) -> String {
    let problem = match code {
        "AuthFailure" | "SignatureDoesNotMatch" | "IncompleteSignature" => format!(
            "the signature made with access key {access_key_id} was refused: check that \
             AWS_SECRET_ACCESS_KEY belongs to AWS_ACCESS_KEY_ID (and AWS_SESSION_TOKEN, for \
             temporary credentials) and that the clock is right"
        ),
        "InvalidClientTokenId" => {
            format!("access key {access_key_id} (AWS_ACCESS_KEY_ID) is not known to AWS")
        }
        "ExpiredToken" | "RequestExpired" => {
            format!("the credentials of access key {access_key_id} have expired, or the clock is off")
        }
        "UnauthorizedOperation" | "AccessDenied" => {
            format!("access key {access_key_id} is not allowed ec2:{action}; grant it in IAM")
        }
        "OptInRequired" | "Blocked" => {
            format!("the account of access key {access_key_id} cannot use EC2 in this region")
        }
        _ => return String::new(),
    };
    format!(" ({problem})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents_of_ec2_and_of_moto_are_read() {
        let ec2 = "<Response><Errors><Error><Code>InsufficientInstanceCapacity</Code>\
                   <Message>No capacity in us-east-1a &amp; more</Message></Error></Errors>\
                   <RequestID>r</RequestID></Response>";
        assert_eq!(
            parse_error_document(ec2),
            Some(("InsufficientInstanceCapacity".into(), "No capacity in us-east-1a & more".into()))
        );
        let moto_auth = "<ErrorResponse><Errors><Error><Code>AuthFailure</Code><Message>AWS was \
                         not able to validate</Message><Type>Sender</Type></Error></Errors></ErrorResponse>";
        assert_eq!(parse_error_document(moto_auth).unwrap().0, "AuthFailure");
        assert_eq!(parse_error_document("<html>Bad Gateway</html>"), None);
        assert_eq!(parse_error_document("not xml <<"), None);
        assert_eq!(parse_error_document("<Response><Code>x</Code></Response>"), None);
    }

    #[test]
    fn codes_are_classified() {
        let cases = [
            ("InsufficientInstanceCapacity", 400, ErrorClass::ZoneCapacity),
            ("Unsupported", 400, ErrorClass::ZoneCapacity),
            ("VcpuLimitExceeded", 400, ErrorClass::RegionQuota),
            ("InstanceLimitExceeded", 400, ErrorClass::RegionQuota),
            ("AuthFailure", 401, ErrorClass::Auth),
            ("UnauthorizedOperation", 403, ErrorClass::Auth),
            ("AccessDenied", 403, ErrorClass::Auth),
            ("SomethingNew", 403, ErrorClass::Auth),
            ("RequestLimitExceeded", 503, ErrorClass::Throttling),
            ("SomethingNew", 502, ErrorClass::Throttling),
            ("DryRunOperation", 412, ErrorClass::DryRunSucceeded),
            ("InvalidParameterValue", 400, ErrorClass::Other),
        ];
        for (code, status, class) in cases {
            assert_eq!(classify(code, status), class, "{code} {status}");
        }
    }
}
