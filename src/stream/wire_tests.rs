//! The spec's test vectors (shared/reference/loom-wire-protocol.md §6), both directions, and
//! a property test that the decoders never panic on arbitrary bytes.

use super::*;
use proptest::prelude::*;

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..digits.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&digits[index..index + 2], 16).unwrap())
        .collect()
}

fn varint_bytes(value: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_varint(&mut out, value);
    out.to_vec()
}

fn hello(role: Role, name: &str, room: &str, token: &str) -> Hello {
    Hello {
        role,
        name: Bytes::copy_from_slice(name.as_bytes()),
        room: Bytes::copy_from_slice(room.as_bytes()),
        token: Bytes::copy_from_slice(token.as_bytes()),
    }
}

fn encoded_hello(value: &Hello) -> Vec<u8> {
    let mut out = BytesMut::new();
    value.encode(&mut out);
    out.to_vec()
}

#[test]
fn varint_table() {
    let table: &[(u64, &str)] = &[
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "80 01"),
        (255, "ff 01"),
        (300, "ac 02"),
        (16383, "ff 7f"),
        (16384, "80 80 01"),
        (65536, "80 80 04"),
        (1 << 20, "80 80 40"),
        (256 << 20, "80 80 80 80 01"),
        (1 << 50, "80 80 80 80 80 80 80 02"),
    ];
    for (value, bytes) in table {
        let expected = hex(bytes);
        assert_eq!(varint_bytes(*value), expected, "encode {value}");
        assert_eq!(varint_len(*value), expected.len(), "length of {value}");
        assert_eq!(
            decode_varint(&expected, DEFAULT_MAX_VARINT),
            Ok(Some((*value, expected.len()))),
            "decode {value}"
        );
    }
}

#[test]
fn varint_accepts_non_minimal_and_rejects_over_limit_and_overflow() {
    assert_eq!(
        decode_varint(&hex("80 00"), DEFAULT_MAX_VARINT),
        Ok(Some((0, 2)))
    );
    assert_eq!(
        decode_varint(&hex("81 80 80 80 80 80 80 02"), DEFAULT_MAX_VARINT),
        Err(WireError::VarintTooLarge {
            value: (1 << 50) + 1,
            limit: DEFAULT_MAX_VARINT
        })
    );
    assert_eq!(
        decode_varint(&hex("ff ff ff ff ff ff ff ff ff 02"), u64::MAX),
        Err(WireError::VarintOverflow)
    );
    assert_eq!(
        decode_varint(&hex("ff ff ff ff ff ff ff ff ff 01"), u64::MAX),
        Ok(Some((u64::MAX, 10)))
    );
    assert_eq!(
        decode_varint(&hex("80 80 80 80 80 80 80 80 80 80 00"), u64::MAX),
        Err(WireError::VarintOverflow)
    );
    assert_eq!(decode_varint(&hex("80 80"), DEFAULT_MAX_VARINT), Ok(None));
}

#[test]
fn hello_vectors() {
    let limits = WireLimits::default();
    let cases = [
        (
            hello(Role::Producer, "p1", "room", "tok"),
            "4c4f4f4d 04 50 02 7031 04 726f6f6d 03 746f6b",
        ),
        (
            hello(Role::Consumer, "c1", "default", ""),
            "4c4f4f4d 04 43 02 6331 07 64656661756c74 00",
        ),
        (
            hello(Role::Producer, "producer", "default", ""),
            "4c4f4f4d 04 50 08 70726f6475636572 07 64656661756c74 00",
        ),
        (
            hello(Role::Producer, "ingest", "video", "s3cret"),
            "4c4f4f4d0450 06 696e67657374 05 766964656f 06 733363726574",
        ),
        (
            hello(Role::Consumer, "worker-1", "video", "s3cret"),
            "4c4f4f4d0443 08 776f726b65722d31 05 766964656f 06 733363726574",
        ),
    ];
    for (value, bytes) in cases {
        let expected = hex(bytes);
        assert_eq!(encoded_hello(&value), expected);
        assert_eq!(
            Hello::decode(&expected, &limits),
            Ok(Some((value, expected.len())))
        );
        // Every proper prefix asks for more bytes.
        for end in 0..expected.len() {
            assert_eq!(
                Hello::decode(&expected[..end], &limits),
                Ok(None),
                "prefix {end}"
            );
        }
    }
    // The spec calls V1 "19 bytes", but its own hex (and V1 + V5 = 29) make it 18.
    assert_eq!(
        encoded_hello(&hello(Role::Producer, "p1", "room", "tok")).len(),
        18
    );
}

#[test]
fn invalid_hellos_follow_the_reference_order() {
    let limits = WireLimits::default();
    assert_eq!(
        Hello::decode(b"LOOX\x04P", &limits),
        Err(WireError::BadMagic)
    );
    assert_eq!(Hello::decode(b"X", &limits), Err(WireError::BadMagic));
    assert_eq!(
        Hello::decode(b"LOOM\x03P", &limits),
        Err(WireError::BadVersion(3))
    );
    assert_eq!(
        Hello::decode(&hex("4c4f4f4d 04 58 00 00 00"), &limits),
        Err(WireError::BadRole(b'X'))
    );
    // The fields are checked before the role byte, as the reference does.
    assert_eq!(
        Hello::decode(&hex("4c4f4f4d 04 58 81 01"), &limits),
        Err(WireError::FieldTooLong {
            field: "name",
            length: 129,
            limit: 128
        })
    );
    let long_token = hex("4c4f4f4d 04 50 00 00 81 08");
    assert_eq!(
        Hello::decode(&long_token, &limits),
        Err(WireError::FieldTooLong {
            field: "token",
            length: 1025,
            limit: 1024
        })
    );
}

#[test]
fn message_vectors() {
    let limits = WireLimits::default();
    // V5: one chunk, key k, declared 5, id 0, body hello.
    let mut out = BytesMut::new();
    encode_header_parts(&mut out, b"k", 5, 0);
    encode_chunk(&mut out, b"hello");
    encode_end_of_message(&mut out);
    assert_eq!(out.to_vec(), hex("01 6b 05 00 05 68656c6c6f 00"));
    let (header, used) = MessageHeader::decode(&out, &limits).unwrap().unwrap();
    assert_eq!(
        header,
        MessageHeader {
            key: Bytes::from_static(b"k"),
            declared_size: 5,
            message_id: 0
        }
    );
    assert_eq!(used, 4);
    assert_eq!(decode_chunk_length(&out[4..], &limits), Ok(Some((5, 1))));
    assert_eq!(decode_chunk_length(&out[10..], &limits), Ok(Some((0, 1))));

    // V1 + V5 as one producer stream.
    let mut stream = BytesMut::new();
    hello(Role::Producer, "p1", "room", "tok").encode(&mut stream);
    stream.extend_from_slice(&out);
    assert_eq!(
        stream.to_vec(),
        hex("4c4f4f4d045002703104726f6f6d03746f6b016b05000568656c6c6f00")
    );

    // V6: as delivered with server id 1, and its ACK.
    let mut delivered = BytesMut::new();
    encode_header_parts(&mut delivered, b"k", 5, 1);
    encode_chunk(&mut delivered, b"hello");
    encode_end_of_message(&mut delivered);
    assert_eq!(delivered.to_vec(), hex("01 6b 05 01 05 68656c6c6f 00"));
    let mut ack = BytesMut::new();
    Frame::ack(1).encode(&mut ack);
    assert_eq!(ack.to_vec(), hex("01 01"));

    // V7: two chunks, unknown size.
    let mut two = BytesMut::new();
    encode_header_parts(&mut two, b"user-42", 0, 0);
    encode_chunk(&mut two, b"ab");
    encode_chunk(&mut two, b"c");
    encode_end_of_message(&mut two);
    assert_eq!(
        two.to_vec(),
        hex("07 757365722d3432 00 00 02 6162 01 63 00")
    );

    // V8: header only with id 300, and ACK(300).
    let mut only = BytesMut::new();
    encode_header_parts(&mut only, b"k", 65_536, 300);
    assert_eq!(only.to_vec(), hex("01 6b 80 80 04 ac 02"));
    let mut ack = BytesMut::new();
    Frame::ack(300).encode(&mut ack);
    assert_eq!(ack.to_vec(), hex("01 ac 02"));
    assert_eq!(
        Frame::decode(&ack, DEFAULT_MAX_VARINT),
        Ok(Some((Frame::ack(300), 3)))
    );
}

#[test]
fn seventy_thousand_bytes_in_64k_chunks() {
    let limits = WireLimits::default();
    let body: Vec<u8> = (0..70_000u32).map(|index| (index % 251) as u8).collect();
    let mut out = BytesMut::new();
    encode_header_parts(&mut out, b"k", 70_000, 0);
    for chunk in body.chunks(65_536) {
        encode_chunk(&mut out, chunk);
    }
    encode_end_of_message(&mut out);
    assert_eq!(&out[..6], &hex("01 6b f0 a2 04 00")[..]);
    assert_eq!(&out[6..9], &hex("80 80 04")[..]);
    assert_eq!(&out[9 + 65_536..9 + 65_536 + 2], &hex("f0 22")[..]);
    assert_eq!(out.len(), 6 + 3 + 65_536 + 2 + 4_464 + 1);
    assert_eq!(out[out.len() - 1], 0);

    // Decode it back.
    let (_, mut position) = MessageHeader::decode(&out, &limits).unwrap().unwrap();
    let mut decoded = Vec::new();
    loop {
        let (length, used) = decode_chunk_length(&out[position..], &limits)
            .unwrap()
            .unwrap();
        position += used;
        if length == 0 {
            break;
        }
        decoded.extend_from_slice(&out[position..position + length as usize]);
        position += length as usize;
    }
    assert_eq!(decoded, body);
    assert_eq!(position, out.len());
}

#[test]
fn invalid_message_fields() {
    let limits = WireLimits::default();
    assert_eq!(
        MessageHeader::decode(&hex("00"), &limits),
        Err(WireError::EmptyKey)
    );
    assert_eq!(
        MessageHeader::decode(&hex("81 02"), &limits),
        Err(WireError::KeyTooLarge {
            length: 257,
            limit: 256
        })
    );
    assert_eq!(
        decode_chunk_length(&hex("81 80 08"), &limits),
        Err(WireError::ChunkTooLarge {
            length: 131_073,
            limit: 65_536
        })
    );
    assert_eq!(MessageHeader::decode(&hex("01 6b 05"), &limits), Ok(None));
}

proptest! {
    #[test]
    fn decoders_never_panic(input in proptest::collection::vec(any::<u8>(), 0..64)) {
        let limits = WireLimits::default();
        let _ = Hello::decode(&input, &limits);
        let _ = MessageHeader::decode(&input, &limits);
        let _ = decode_chunk_length(&input, &limits);
        let _ = Frame::decode(&input, limits.max_varint);
        let _ = decode_varint(&input, u64::MAX);
    }

    #[test]
    fn hello_with_magic_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..48)) {
        let mut input = b"LOOM\x04".to_vec();
        input.extend_from_slice(&tail);
        let _ = Hello::decode(&input, &WireLimits::default());
    }

    #[test]
    fn varints_round_trip(value in 0u64..=DEFAULT_MAX_VARINT) {
        let bytes = varint_bytes(value);
        prop_assert_eq!(bytes.len(), varint_len(value));
        prop_assert_eq!(decode_varint(&bytes, DEFAULT_MAX_VARINT), Ok(Some((value, bytes.len()))));
    }

    #[test]
    fn hellos_round_trip(
        producer in any::<bool>(),
        name in proptest::collection::vec(any::<u8>(), 0..128),
        room in proptest::collection::vec(any::<u8>(), 0..128),
        token in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let value = Hello {
            role: if producer { Role::Producer } else { Role::Consumer },
            name: name.into(),
            room: room.into(),
            token: token.into(),
        };
        let bytes = encoded_hello(&value);
        prop_assert_eq!(Hello::decode(&bytes, &WireLimits::default()), Ok(Some((value, bytes.len()))));
    }
}
