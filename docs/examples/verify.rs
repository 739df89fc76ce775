//! Verifies a Provisioning API delivery the Standard Webhooks way, in Rust, with the
//! `hmac`, `sha2` and `base64` crates:
//!
//! ```toml
//! hmac = "0.12"
//! sha2 = "0.10"
//! base64 = "0.22"
//! ```
//!
//! Call [`verify`] in your handler before acting on a request, with the raw body
//! exactly as received. The repository's tests compile this file and run it against
//! real deliveries.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far `webhook-timestamp` may be from now, in seconds (replay protection).
pub const TOLERANCE_SECONDS: u64 = 5 * 60;

/// `Ok(())` if the request is authentic; the reason otherwise. `header` looks a
/// request header up by its lower-case name; `now` is the Unix time in seconds.
pub fn verify<'a>(
    secret: &str,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: u64,
) -> Result<(), String> {
    let id = header("webhook-id").ok_or("missing webhook-id")?;
    let timestamp = header("webhook-timestamp").ok_or("missing webhook-timestamp")?;
    let signatures = header("webhook-signature").ok_or("missing webhook-signature")?;
    let seconds: u64 = timestamp.parse().map_err(|_| "bad webhook-timestamp")?;
    if seconds.abs_diff(now) > TOLERANCE_SECONDS {
        return Err("timestamp outside the tolerance".into());
    }
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| "the secret is not whsec_<base64>")?;
    // Several space-separated signatures may be sent (e.g. during a key rotation).
    for candidate in signatures.split(' ') {
        let Some(("v1", signature)) = candidate.split_once(',') else {
            continue;
        };
        let Ok(signature) = BASE64.decode(signature) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        // Constant-time comparison.
        if mac.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err("no matching signature".into())
}
