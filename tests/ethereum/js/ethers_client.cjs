// What a dApp does with ethers v6 against a JSON-RPC node; prints one JSON line of results
// that must not depend on which node answered (issue 19 item 2).
// usage: node ethers_client.cjs <rpc url> <contract.json> (NODE_PATH: the ethers install)
const { ethers } = require("ethers");
const fs = require("fs");

// ethers v6 `contract.on` (FilterIdEventSubscriber) starts its subscription without awaiting it:
// `eth_newFilter` goes out after `contract.on` returns, and the node's filter only sees logs of
// blocks mined after it is installed. A dApp that must not miss its own next event waits for
// the filter to be installed; this provider tells when the node has answered `eth_newFilter`.
class FilterAwareProvider extends ethers.JsonRpcProvider {
  nextFilter() {
    return new Promise((resolve) => { this.onFilterInstalled = resolve; });
  }
  async send(method, params) {
    const result = await super.send(method, params);
    if (method === "eth_newFilter" && this.onFilterInstalled) this.onFilterInstalled(result);
    return result;
  }
}

async function main() {
  const [url, artifactPath] = process.argv.slice(2);
  const artifact = JSON.parse(fs.readFileSync(artifactPath, "utf8"));
  const provider = new FilterAwareProvider(url, undefined, { pollingInterval: 100, cacheTimeout: -1 });
  const out = {};
  const accounts = await provider.listAccounts();
  const signer = accounts[0];
  out.hasAccount = accounts.length > 0;
  // A fresh key funded by the node's unlocked account, as a wallet would be.
  const wallet = ethers.Wallet.createRandom().connect(provider);
  const fund = await signer.sendTransaction({ to: wallet.address, value: ethers.parseEther("1") });
  const fundReceipt = await fund.wait();
  out.fundStatus = fundReceipt.status;
  out.walletBalance = (await provider.getBalance(wallet.address)).toString();

  const factory = new ethers.ContractFactory(artifact.abi, artifact.bytecode, wallet);
  const contract = await factory.deploy();
  await contract.waitForDeployment();
  const address = await contract.getAddress();
  out.deployed = (await provider.getCode(address)).length > 2;

  const seen = [];
  let onHeard = () => {};
  const filterInstalled = provider.nextFilter();
  await contract.on("Ping", (who, n) => {
    seen.push(Number(n));
    onHeard();
  });
  await filterInstalled;
  // ethers polls `eth_getFilterChanges` once per "block" event, and re-arms for the next block
  // only after that poll returns: a block mined while a poll is in flight is not polled for,
  // its logs wait in the node's filter for the block after. A live chain always has one; geth
  // --dev and the devnet mine only on a transaction, so the dApp gives the chain its next
  // block (a 0-value transfer from the node's account, which no result below reads) until the
  // event is heard. Bounded: each round mines a block that ethers polls unless it was still
  // busy with the previous one.
  async function hear(count) {
    for (let round = 0; round < 40; round++) {
      const heard = new Promise((resolve) => {
        onHeard = () => { if (seen.length >= count) resolve(true); };
        onHeard();
        setTimeout(() => resolve(false), 500);
      });
      if (await heard) return;
      await (await signer.sendTransaction({ to: signer.address, value: 0 })).wait();
    }
    throw new Error("contract.on heard " + JSON.stringify(seen));
  }
  const tx1 = await contract.ping(7);
  const r1 = await tx1.wait();
  await hear(1);
  const tx2 = await contract.ping(8);
  await tx2.wait();
  await hear(2);
  await contract.removeAllListeners();
  out.heard = seen;

  const events = await contract.queryFilter("Ping", 0, "latest");
  out.queryFilter = events.map((e) => [e.args.who === wallet.address, Number(e.args.n)]);
  const logs = await provider.getLogs({ address, fromBlock: 0, toBlock: "latest" });
  out.getLogs = logs.map((l) => [l.address === address, l.topics.length, l.blockHash === logs[0].blockHash || l.blockNumber > logs[0].blockNumber]);
  const byHash = await provider.getLogs({ blockHash: r1.blockHash });
  out.logsByBlockHash = byHash.length;

  const block = await provider.getBlock(r1.blockNumber, true);
  const inBlock = block.prefetchedTransactions.find((t) => t.hash === tx1.hash);
  out.blockTx = inBlock ? [inBlock.from === wallet.address, inBlock.to === address, inBlock.data === tx1.data, inBlock.blockNumber === r1.blockNumber] : null;
  out.blockHashMatches = block.hash === r1.blockHash;
  const fetched = await provider.getTransaction(tx1.hash);
  out.getTransaction = [fetched.from === wallet.address, fetched.nonce, fetched.chainId === (await provider.getNetwork()).chainId];

  // Refusals: geth's typed errors, as ethers classifies them.
  const errors = {};
  try { await wallet.sendTransaction({ to: wallet.address, value: ethers.parseEther("1000000") }); } catch (e) { errors.overspend = e.code; }
  try { await wallet.sendTransaction({ to: wallet.address, nonce: 0, value: 1 }); } catch (e) { errors.nonceReused = e.code; }
  try { await provider.send("eth_noSuchMethod", []); } catch (e) { errors.unknownMethod = e.error ? e.error.code : e.code; }
  try { await provider.send("eth_getBalance", ["0x1234", "latest"]); } catch (e) { errors.badAddress = e.error ? e.error.code : e.code; }
  out.errors = errors;
  console.log(JSON.stringify(out));
  provider.destroy();
}

main().catch((e) => { console.error(e); process.exit(1); });
