//! The envelope parser on arbitrary bodies: it never panics, every rejection is a permanent error with a
//! precise class, and whatever it accepts survives a round trip through its own serialisation.
#![no_main]

use dualcaster::envelope::Envelope;
use dualcaster::ErrorKind;
use libfuzzer_sys::fuzz_target;

const CLASSES: &[&str] = &["malformed_message", "unsupported_version"];

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match Envelope::parse(body) {
        Ok(envelope) => {
            let again = Envelope::parse(&envelope.to_json())
                .unwrap_or_else(|e| panic!("own serialisation rejected: {e} for {body:?}"));
            assert_eq!(again.to_json(), envelope.to_json());
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Permanent, "{e} for {body:?}");
            assert!(
                CLASSES.contains(&e.class()),
                "unexpected class {} for {body:?}",
                e.class()
            );
        }
    }
});
