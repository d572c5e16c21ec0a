(campaign, name, action) => {
  // The Campaigns screen's `act` event: hands the action the page prepared (assets/campaign.js) to the server as
  // JSON, with the campaign and the annotator name as they are in their boxes.
  const page = window.mt5Campaign;
  return [campaign, name, JSON.stringify(page ? page.take() : {})];
}
