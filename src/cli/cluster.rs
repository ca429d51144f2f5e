//! `kairos-rs cluster bootstrap`: writes the shared part of a config file into the etcd key
//! its `cluster.config_store` names, refusing a key that holds a config already unless forced.

use crate::cli::remote::RemoteError;
use crate::runtime::store::etcd::{Etcd, Written};
use std::path::Path;

/// Validates the whole file (as a gateway would, with this environment), then writes its
/// shared part into the store: created when the key does not exist, replaced only with
/// `force`. The text printed on success.
pub fn bootstrap(path: &Path, force: bool) -> Result<String, RemoteError> {
    let config = crate::config::load_file(path).map_err(|e| {
        RemoteError::Invalid(format!("not bootstrapped: the config is invalid:\n{e}"))
    })?;
    let Some(store) = &config.config_store else {
        return Err(RemoteError::Usage(format!(
            "{}: no cluster.config_store: which store should hold the config?",
            path.display()
        )));
    };
    let text = crate::config::read_file(path).map_err(|e| RemoteError::Usage(e.to_string()))?;
    let Some(shared) = crate::config::cluster::shared_part(&text) else {
        return Err(RemoteError::Invalid(format!(
            "{}: not a JSON object",
            path.display()
        )));
    };
    crate::base::tls::install_crypto_provider();
    let etcd = Etcd::new(store);
    // Created only if absent (mod revision 0), unless forced.
    let expected = (!force).then_some(0);
    match etcd.put_if_blocking(&shared, expected) {
        Ok(Written::Done(revision)) => Ok(format!(
            "wrote the shared config of {} to etcd key {} (revision {revision})\n",
            path.display(),
            store.key
        )),
        Ok(Written::Conflict(revision)) => Err(RemoteError::Failed(format!(
            "refused: etcd key {} holds a config already (revision {revision}); \
             deploy changes with `kairos-rs config deploy`, or overwrite with --force",
            store.key
        ))),
        Err(e) => Err(RemoteError::Unreachable(e.to_string())),
    }
}
