//! Client addresses as text, written without `fmt`: an address is written on every proxied
//! request (X-Forwarded-For, the access log), and `Ipv4Addr`'s `Display` costs about 1,300
//! instructions where this costs about 100 (callgrind, `loadtest/instructions.sh`).

use std::io::Write;
use std::net::IpAddr;

/// Longest address text: an IPv6 address with an embedded IPv4 one.
pub const MAX_IP_TEXT: usize = 45;

/// Appends `address` in its usual text form (`203.0.113.7`, `2001:db8::1`).
pub fn push_ip(out: &mut Vec<u8>, address: IpAddr) {
    match address {
        IpAddr::V4(address) => {
            // Built on the stack and appended once: one capacity check and one copy, rather
            // than one of each per digit and dot.
            let mut text = [0u8; 15];
            let mut length = 0;
            for (index, octet) in address.octets().into_iter().enumerate() {
                if index > 0 {
                    text[length] = b'.';
                    length += 1;
                }
                if octet >= 100 {
                    text[length] = b'0' + octet / 100;
                    length += 1;
                }
                if octet >= 10 {
                    text[length] = b'0' + octet / 10 % 10;
                    length += 1;
                }
                text[length] = b'0' + octet % 10;
                length += 1;
            }
            out.extend_from_slice(&text[..length]);
        }
        // Rare enough on this path that the standard formatting (with its `::` compression
        // rules) is the right tool; writing to a Vec cannot fail.
        IpAddr::V6(address) => {
            let _ = write!(out, "{address}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(address: &str) -> String {
        let mut out = Vec::new();
        push_ip(&mut out, address.parse().unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_display_writes() {
        for address in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "203.0.113.7",
            "::1",
            "2001:db8::1",
            "::ffff:192.0.2.128",
            "fe80::1:2:3:4",
        ] {
            let parsed: IpAddr = address.parse().unwrap();
            assert_eq!(text(address), parsed.to_string());
            assert!(text(address).len() <= MAX_IP_TEXT);
        }
    }

    #[test]
    fn every_octet_round_trips() {
        for octet in 0..=255u8 {
            let address = IpAddr::from([octet, 0, octet, 1]);
            assert_eq!(text(&address.to_string()), address.to_string());
        }
    }
}
