//! Who may open a producer or consumer stream in which room: the reference server's modes
//! (`disabled`, `token`, `mtls`, `both`) and grant rules (`*` for any room, an empty room or
//! role list denies all).

use crate::config::stream::{AuthMode, AuthPlan, Grant};

use super::wire::Role;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown token")]
    UnknownToken,
    #[error("no client certificate")]
    MissingCertificate,
    #[error("client certificate \"{0}\" is not listed")]
    UnknownCertificate(String),
    #[error("{principal} may not {action} in room \"{room}\"")]
    NotAllowed {
        principal: String,
        action: &'static str,
        room: String,
    },
}

/// Checks one hello. `raw_room` is the room as sent (empty allowed); `room` is the name it
/// resolves to (`default` for empty). A grant naming either matches, so files written for the
/// reference (which checks the raw name) keep working.
pub fn authorize(
    plan: &AuthPlan,
    role: Role,
    raw_room: &str,
    room: &str,
    token: &[u8],
    certificate_name: Option<&str>,
) -> Result<Option<String>, AuthError> {
    let check_token = || {
        let grant = std::str::from_utf8(token)
            .ok()
            .and_then(|token| plan.tokens.get(token))
            .ok_or(AuthError::UnknownToken)?;
        permits(grant, role, raw_room, room)
    };
    let check_certificate = || {
        let name = certificate_name.ok_or(AuthError::MissingCertificate)?;
        let grant = plan
            .certs
            .get(name)
            .ok_or_else(|| AuthError::UnknownCertificate(name.to_string()))?;
        permits(grant, role, raw_room, room)
    };
    match plan.mode {
        AuthMode::Disabled => Ok(None),
        AuthMode::Token => check_token().map(Some),
        AuthMode::Mtls => check_certificate().map(Some),
        AuthMode::Both => {
            check_token()?;
            check_certificate().map(Some)
        }
    }
}

fn permits(grant: &Grant, role: Role, raw_room: &str, room: &str) -> Result<String, AuthError> {
    let role_allowed = match role {
        Role::Producer => grant.produce,
        Role::Consumer => grant.consume,
    };
    let room_allowed = match &grant.rooms {
        None => true,
        Some(rooms) => rooms.iter().any(|name| name == raw_room || name == room),
    };
    if role_allowed && room_allowed {
        Ok(grant.principal.clone())
    } else {
        Err(AuthError::NotAllowed {
            principal: grant.principal.clone(),
            action: match role {
                Role::Producer => "produce",
                Role::Consumer => "consume",
            },
            room: room.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn plan(mode: AuthMode) -> AuthPlan {
        let grant = |principal: &str, rooms: Option<Vec<&str>>, produce, consume| Grant {
            principal: principal.to_string(),
            rooms: rooms.map(|rooms| rooms.into_iter().map(String::from).collect()),
            produce,
            consume,
        };
        AuthPlan {
            mode,
            tokens: HashMap::from([
                ("all".to_string(), grant("alice", None, true, true)),
                (
                    "video".to_string(),
                    grant("bob", Some(vec!["video"]), true, false),
                ),
                ("none".to_string(), grant("carol", Some(vec![]), true, true)),
            ]),
            certs: HashMap::from([("worker".to_string(), grant("worker", None, false, true))]),
        }
    }

    #[test]
    fn token_rules() {
        let plan = plan(AuthMode::Token);
        let check = |role, room: &str, token: &str| {
            authorize(&plan, role, room, room, token.as_bytes(), None)
        };
        assert_eq!(check(Role::Producer, "x", "all"), Ok(Some("alice".into())));
        assert_eq!(
            check(Role::Consumer, "x", "wrong"),
            Err(AuthError::UnknownToken)
        );
        assert!(check(Role::Producer, "video", "video").is_ok());
        assert!(check(Role::Consumer, "video", "video").is_err());
        assert!(check(Role::Producer, "audio", "video").is_err());
        assert!(check(Role::Producer, "video", "none").is_err());
    }

    #[test]
    fn certificate_and_both_modes() {
        let mtls = plan(AuthMode::Mtls);
        assert!(authorize(&mtls, Role::Consumer, "a", "a", b"", Some("worker")).is_ok());
        assert!(authorize(&mtls, Role::Producer, "a", "a", b"", Some("worker")).is_err());
        assert_eq!(
            authorize(&mtls, Role::Consumer, "a", "a", b"", None),
            Err(AuthError::MissingCertificate)
        );
        let both = plan(AuthMode::Both);
        assert!(authorize(&both, Role::Consumer, "a", "a", b"all", Some("worker")).is_ok());
        assert!(authorize(&both, Role::Consumer, "a", "a", b"bad", Some("worker")).is_err());
        assert!(authorize(&both, Role::Consumer, "a", "a", b"all", Some("other")).is_err());
        assert_eq!(
            authorize(
                &plan(AuthMode::Disabled),
                Role::Producer,
                "",
                "default",
                b"",
                None
            ),
            Ok(None)
        );
    }
}
