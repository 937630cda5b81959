//! Loading a plugin's JSON configuration.

use log::error;
use proxy_wasm::traits::RootContext;
use serde::de::DeserializeOwned;

/// Parses a plugin configuration. A missing or empty configuration counts as `{}`, so a plugin
/// whose settings all have defaults needs no `config:` block, while a required field still
/// yields an error. Errors name the key path (`request.set: invalid type ...`).
pub fn parse<T: DeserializeOwned>(raw: Option<&[u8]>) -> Result<T, String> {
    let raw = match raw {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => bytes,
        _ => b"{}",
    };
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let parsed: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|failure| {
        let path = failure.path().to_string();
        // serde_path_to_error says "." for the root and "?" where it lost track (at EOF).
        if path == "." || path == "?" {
            failure.inner().to_string()
        } else {
            format!("{path}: {}", failure.inner())
        }
    })?;
    deserializer
        .end()
        .map_err(|failure| format!("trailing data after the configuration: {failure}"))?;
    Ok(parsed)
}

/// A configuration that can reject values serde accepts (zero periods, empty names).
pub trait Validate {
    fn validate(&self) -> Result<(), String>;
}

/// Reads, parses and validates the plugin configuration of `root`; on failure logs why at
/// error level (prefixed with the plugin's name) and returns `None`, and the caller returns
/// `false` from `on_configure` so the host rejects the configuration.
pub fn load<T: DeserializeOwned + Validate>(root: &dyn RootContext, plugin: &str) -> Option<T> {
    let raw = root.get_plugin_configuration();
    match parse::<T>(raw.as_deref()).and_then(|config| config.validate().map(|()| config)) {
        Ok(config) => Some(config),
        Err(reason) => {
            error!("{plugin}: invalid configuration: {reason}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        limit: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[test]
    fn missing_and_blank_configuration_are_empty_objects() {
        assert_eq!(parse::<Outer>(None), Ok(Outer { inner: None }));
        assert_eq!(parse::<Outer>(Some(b" \n")), Ok(Outer { inner: None }));
    }

    #[test]
    fn errors_name_the_key_path() {
        let error = parse::<Outer>(Some(br#"{"inner": {"limit": "ten"}}"#)).unwrap_err();
        assert!(error.starts_with("inner.limit: invalid type"), "{error}");
        let error = parse::<Outer>(Some(br#"{"inner": {"limt": 1}}"#)).unwrap_err();
        assert!(error.contains("unknown field `limt`"), "{error}");
    }

    #[test]
    fn trailing_data_is_an_error() {
        assert!(parse::<Outer>(Some(b"{} {}")).is_err());
    }
}
