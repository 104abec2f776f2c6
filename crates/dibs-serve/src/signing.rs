//! Signed heads: the ledger's head (an entry's sequence number and hash), signed with an
//! Ed25519 key kept beside the ledger (`ledger.key` in the data folder, made at the first
//! start, readable by its owner only). The service writes a signed checkpoint into the
//! store every [`CHECKPOINT_ENTRIES`] entries or [`CHECKPOINT_EVERY`], and at shutdown, so
//! `dibs ledger verify` finds a tail cut off or a rewrite under a checkpoint. A head handed
//! out (`GET /v1/ledger/head`, `dibs ledger head`) can be kept by a counterparty and checked
//! later with `dibs ledger verify --head FILE`: a ledger truncated or rewritten together
//! with its checkpoints still fails that check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dibs_store::{SignedHead, head_message};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hex::FromHex;
use serde::{Deserialize, Serialize};

/// The key's file in the data folder: its 32-byte secret, hex.
pub const KEY_FILE: &str = "ledger.key";
/// A checkpoint at least every this many entries...
pub const CHECKPOINT_ENTRIES: u64 = 1000;
/// ...and every this long while entries are written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The ledger key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file holds something other than a 32-byte key in hex.
    #[error("{}: not a 32-byte key in hex", path.display())]
    NotAKey { path: PathBuf },
    /// The data folder has no key (nothing was ever signed there).
    #[error("{}: no {KEY_FILE} (a dibs serve with this data folder makes one)", data.display())]
    Missing { data: PathBuf },
    /// The system gave no random bytes for a new key.
    #[error("a new ledger key: {0}")]
    Random(getrandom::Error),
    /// The key file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

/// A signed head is not well formed, or not signed by the key it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// A field of a head kept as JSON is not the hex it should be; the text names the field
    /// and what it should be ("hash: not 32 bytes of hex").
    #[error("{0}")]
    NotHex(&'static str),
    #[error("the head at entry {0} has no valid public key")]
    NoPublicKey(u64),
    #[error("the head at entry {0} has no valid signature")]
    NoSignature(u64),
    #[error("the head at entry {0} is not signed by the key it names")]
    WrongKey(u64),
}

/// The key that signs this service's heads.
pub struct HeadSigner {
    key: SigningKey,
}

impl HeadSigner {
    /// The key in `data`, made now if there is none.
    pub fn load_or_create(data: &Path) -> Result<Self, KeyError> {
        let path = data.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = <[u8; 32]>::from_hex(text.trim()).map_err(|_| KeyError::NotAKey { path })?;
                Ok(Self { key: SigningKey::from_bytes(&bytes) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(KeyError::Random)?;
                if let Err(error) = write_private(&path, &hex::encode(secret)) {
                    return Err(KeyError::Io { path, error });
                }
                Ok(Self { key: SigningKey::from_bytes(&secret) })
            }
            Err(error) => Err(KeyError::Io { path, error }),
        }
    }

    /// The key in `data`; an error when there is none (nothing was ever signed there).
    pub fn load(data: &Path) -> Result<Self, KeyError> {
        if !data.join(KEY_FILE).is_file() {
            return Err(KeyError::Missing { data: data.to_path_buf() });
        }
        Self::load_or_create(data)
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs that entry `seq` hashed to `hash`, at `at`.
    pub fn sign(&self, seq: u64, hash: [u8; 32], at: String) -> SignedHead {
        let signature = self.key.sign(&head_message(seq, &hash));
        SignedHead {
            seq,
            hash,
            at,
            public_key: self.public_key().to_vec(),
            signature: signature.to_bytes().to_vec(),
        }
    }
}

/// Whether `head`'s signature is good under its own public key.
pub fn check(head: &SignedHead) -> Result<(), HeadError> {
    let key = <[u8; 32]>::try_from(head.public_key.as_slice())
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or(HeadError::NoPublicKey(head.seq))?;
    let signature = Signature::from_slice(&head.signature).map_err(|_| HeadError::NoSignature(head.seq))?;
    key.verify(&head_message(head.seq, &head.hash), &signature).map_err(|_| HeadError::WrongKey(head.seq))
}

/// A signed head as JSON: what `dibs ledger head` prints and `GET /v1/ledger/head` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeadView {
    pub seq: u64,
    /// The entry's hash, hex.
    pub hash: String,
    /// When it was signed.
    pub at: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// The signature over `dibs ledger head v1\n{seq}\n{hash}\n`, hex.
    pub signature: String,
}

impl From<&SignedHead> for HeadView {
    fn from(h: &SignedHead) -> Self {
        Self {
            seq: h.seq,
            hash: hex::encode(h.hash),
            at: h.at.clone(),
            public_key: hex::encode(&h.public_key),
            signature: hex::encode(&h.signature),
        }
    }
}

impl HeadView {
    /// The head, if its fields are well formed (the signature is checked by [`check`]).
    pub fn to_signed(&self) -> Result<SignedHead, HeadError> {
        let not_hex = |what| move |_| HeadError::NotHex(what);
        let hash = <[u8; 32]>::from_hex(&self.hash).map_err(not_hex("hash: not 32 bytes of hex"))?;
        Ok(SignedHead {
            seq: self.seq,
            hash,
            at: self.at.clone(),
            public_key: hex::decode(&self.public_key).map_err(not_hex("public_key: not hex"))?,
            signature: hex::decode(&self.signature).map_err(not_hex("signature: not hex"))?,
        })
    }
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_signed_checks_and_any_change_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let signer = HeadSigner::load_or_create(dir.path()).unwrap();
        let again = HeadSigner::load(dir.path()).unwrap();
        assert_eq!(signer.public_key(), again.public_key(), "the key is kept");
        let head = signer.sign(42, [7; 32], "2026-01-01T00:00:00Z".into());
        check(&head).unwrap();
        let view = HeadView::from(&head);
        assert_eq!(view.to_signed().unwrap(), head);
        for changed in [
            SignedHead { seq: 41, ..head.clone() },
            SignedHead { hash: [8; 32], ..head.clone() },
            SignedHead {
                public_key: HeadSigner::load_or_create(tempfile::tempdir().unwrap().path())
                    .unwrap()
                    .public_key()
                    .to_vec(),
                ..head.clone()
            },
        ] {
            assert!(check(&changed).is_err(), "{changed:?}");
        }
    }
}
