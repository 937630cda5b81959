//! The bare cost of checking a JWT, for `loadtest/policy_cost.sh` to put next to what a
//! `jwt_auth` route costs per request: run under callgrind with two counts, the difference
//! divided by the difference in counts is the cost of one check.
//!
//! Usage: jwt_verify_cost ALGORITHM PUBLIC_KEY_PEM TOKEN signature|decode COUNT
//! - `signature`: the signature check alone (`jsonwebtoken::crypto::verify`);
//! - `decode`: what jsonwebtoken does for a token: header, signature, claims, validation.

use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, algorithm, key_file, token, mode, count] = &arguments[..] else {
        return Err(
            "usage: jwt_verify_cost ALGORITHM PUBLIC_KEY_PEM TOKEN signature|decode COUNT".into(),
        );
    };
    let algorithm = Algorithm::from_str(algorithm)?;
    let pem = std::fs::read(key_file)?;
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem)?,
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem)?,
        _ => DecodingKey::from_rsa_pem(&pem)?,
    };
    let count: u64 = count.parse()?;
    let (message, signature) = token.rsplit_once('.').ok_or("not a JWT")?;
    let mut validation = Validation::new(algorithm);
    validation.validate_aud = false;
    let mut accepted = 0u64;
    for _ in 0..count {
        let valid = match mode.as_str() {
            "signature" => {
                jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, algorithm)?
            }
            "decode" => jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                std::hint::black_box(token),
                &key,
                &validation,
            )
            .is_ok(),
            other => return Err(format!("unknown mode {other}").into()),
        };
        accepted += u64::from(valid);
    }
    if accepted != count {
        return Err(format!("only {accepted} of {count} tokens verified").into());
    }
    Ok(())
}
